#!/usr/bin/env python3
"""Lists a directory tree canonically, for comparing filesystems in tests, from a separate process
(never from inside a FUSE-serving process). One line per entry, sorted by path bytes:
path type mode uid gid size mtime rdev target sha256 xattrs linkgroup
Options: --no-xattrs, --no-mtime, --no-dir-mtime, --skip-root-attrs."""
import hashlib, os, stat, sys

def esc(b):
    return ''.join(chr(c) if 0x21 <= c < 0x7f and c != 0x5c else '\\x%02x' % c for c in b)

def main():
    args = sys.argv[1:]
    root = os.fsencode(args[0])
    opts = set(args[1:])
    rows, groups = [], {}
    for dirpath, dirnames, filenames in os.walk(root):
        entries = [(dirpath, None)] if dirpath == root else []
        entries += [(os.path.join(dirpath, n), n) for n in dirnames + filenames]
        for p, name in entries:
            st = os.lstat(p)
            rel = b'/' + os.path.relpath(p, root) if p != root else b'/'
            t = stat.S_IFMT(st.st_mode)
            kind = {stat.S_IFREG: 'f', stat.S_IFDIR: 'd', stat.S_IFLNK: 'l', stat.S_IFCHR: 'c', stat.S_IFBLK: 'b', stat.S_IFIFO: 'p', stat.S_IFSOCK: 's'}[t]
            mode = '%04o' % stat.S_IMODE(st.st_mode)
            size = str(st.st_size) if kind in 'fl' else '-'
            mtime = '%d.%09d' % (st.st_mtime_ns // 10**9, st.st_mtime_ns % 10**9)
            if '--no-mtime' in opts or (kind == 'd' and '--no-dir-mtime' in opts):
                mtime = '-'
            rdev = '%d,%d' % (os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in 'cb' else '-'
            target = esc(os.readlink(p)) if kind == 'l' else '-'
            digest = '-'
            if kind == 'f':
                h = hashlib.sha256()
                with open(p, 'rb') as f:
                    for chunk in iter(lambda: f.read(1 << 20), b''):
                        h.update(chunk)
                digest = h.hexdigest()
            xattrs = '-'
            if '--no-xattrs' not in opts:
                try:
                    names = sorted(os.listxattr(p, follow_symlinks=False))
                    xattrs = ','.join('%s=%s' % (n, os.getxattr(p, n, follow_symlinks=False).hex()) for n in names) or '-'
                except OSError:
                    xattrs = '?'
            if kind != 'd':
                groups.setdefault((st.st_dev, st.st_ino), []).append(rel)
            if rel == b'/' and '--skip-root-attrs' in opts:
                mode = mtime = '-'
            rows.append([rel, kind, mode, str(st.st_uid), str(st.st_gid), size, mtime, rdev, target, digest, xattrs, (st.st_dev, st.st_ino) if kind != 'd' else None])
    rows.sort(key=lambda r: r[0])
    out = []
    for r in rows:
        key = r.pop()
        link = esc(min(groups[key])) if key is not None and len(groups[key]) > 1 else '-'
        out.append(' '.join([esc(r[0])] + r[1:] + [link]))
    sys.stdout.write('\n'.join(out) + '\n')

main()
