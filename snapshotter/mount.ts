/** A mount as containerd describes it: what `mount -t <type> -o <options> <source> <target>` does. */
export interface Mount {
  /** `bind`, `overlay`, ... */
  readonly type: string
  readonly source: string
  /** mount(8) -o options, one per element (`ro`, `rbind`, `lowerdir=...`). */
  readonly options: readonly string[]
}
