// Lint: typescript-eslint's recommended rules plus the import boundaries of docs/ARCHITECTURE.md:
// lib/ imports nothing of ours; components (converter, fsdaemon, snapshotter, p2p) import lib/ and
// never each other (systemd/, the install code, likewise). Only bin/ (the composition root of the `naiad` command) may import components.
import tseslint from 'typescript-eslint'

const COMPONENTS = ['converter', 'fsdaemon', 'snapshotter', 'p2p']

function boundary (self) {
  const others = COMPONENTS.filter(c => c !== self)
  return {
    files: [`${self}/**/*.ts`],
    rules: {
      'no-restricted-imports': ['error', {
        patterns: [{
          group: others.flatMap(c => [`**/${c}/**`, `**/${c}`]),
          message: `${self}/ must not import another component; move the shared piece down into lib/`
        }, {
          group: ['**/bin/**', '**/test/**'],
          message: 'components must not import bin/ or test/'
        }]
      }]
    }
  }
}

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'lib/gen/**', '**/*.js', '**/*.mjs'] },
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/consistent-type-imports': 'error',
      'no-console': 'error',
      eqeqeq: ['error', 'always'],
      'no-var': 'error',
      'prefer-const': 'error'
    }
  },
  {
    files: ['lib/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', {
        patterns: [{
          group: [...COMPONENTS.flatMap(c => [`**/${c}/**`, `**/${c}`]), '**/bin/**', '**/test/**'],
          message: 'lib/ imports nothing of ours outside lib/; move the type down into lib/'
        }]
      }]
    }
  },
  ...COMPONENTS.map(boundary),
  {
    // systemd/ (naiad install) is a component as well; it is not in COMPONENTS because a
    // `**/systemd/**` pattern would also forbid lib/systemd to everyone
    files: ['systemd/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', {
        patterns: [{
          group: COMPONENTS.flatMap(c => [`**/${c}/**`, `**/${c}`]),
          message: 'systemd/ must not import another component; move the shared piece down into lib/'
        }, {
          group: ['**/bin/**', '**/test/**'],
          message: 'components must not import bin/ or test/'
        }]
      }]
    }
  },
  {
    // user-facing output of CLIs, tests and benchmarks may print
    files: ['**/cli.ts', '**/cli/**/*.ts', 'test/**/*.ts', 'bench/**/*.ts', 'bin/**/*.ts'],
    rules: { 'no-console': 'off' }
  }
)
