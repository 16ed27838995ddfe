/**
 * The closed set of error kinds, after containerd's errdefs. Every error code maps to exactly one
 * kind; the kind decides the gRPC status, the HTTP status and the CLI exit code.
 */
export type ErrorKind =
  | 'NotFound'
  | 'AlreadyExists'
  | 'InvalidArgument'
  | 'FailedPrecondition'
  | 'Unavailable'
  | 'Aborted'
  | 'DeadlineExceeded'
  | 'PermissionDenied'
  | 'Unauthenticated'
  | 'ResourceExhausted'
  | 'DataLoss'
  | 'NotImplemented'
  | 'Internal'
  | 'Unknown'

/** gRPC status codes (numeric, as on the wire). */
export const GRPC_STATUS: Readonly<Record<ErrorKind, number>> = Object.freeze({
  NotFound: 5,
  AlreadyExists: 6,
  InvalidArgument: 3,
  FailedPrecondition: 9,
  Unavailable: 14,
  Aborted: 10,
  DeadlineExceeded: 4,
  PermissionDenied: 7,
  Unauthenticated: 16,
  ResourceExhausted: 8,
  DataLoss: 15,
  NotImplemented: 12,
  Internal: 13,
  Unknown: 2
})

export const HTTP_STATUS: Readonly<Record<ErrorKind, number>> = Object.freeze({
  NotFound: 404,
  AlreadyExists: 409,
  InvalidArgument: 400,
  FailedPrecondition: 412,
  Unavailable: 503,
  Aborted: 409,
  DeadlineExceeded: 504,
  PermissionDenied: 403,
  Unauthenticated: 401,
  ResourceExhausted: 429,
  DataLoss: 502,
  NotImplemented: 501,
  Internal: 500,
  Unknown: 500
})

/**
 * CLI exit codes. 0 is success, 1 is reserved for "check found differences" style results,
 * 2 is a usage error; the rest follow the kind.
 */
export const EXIT_CODE: Readonly<Record<ErrorKind, number>> = Object.freeze({
  InvalidArgument: 2,
  NotFound: 3,
  AlreadyExists: 3,
  FailedPrecondition: 4,
  PermissionDenied: 5,
  Unauthenticated: 5,
  Unavailable: 6,
  DeadlineExceeded: 6,
  ResourceExhausted: 6,
  Aborted: 7,
  DataLoss: 8,
  NotImplemented: 9,
  Internal: 10,
  Unknown: 10
})
