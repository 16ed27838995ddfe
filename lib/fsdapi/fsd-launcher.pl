#!/usr/bin/perl
# naiad fsdaemon failover launcher (lib/fsdapi/failover.ts explains the whole of it).
#
#   perl fsd-launcher.pl <socket>.fuse-holders <command> [<arg>...]
#
# For each live holder listed in the holders file (pid TAB fd TAB hex(mountpoint)), duplicates
# the holder's /dev/fuse descriptor with pidfd_getfd(2) (Linux 5.6+), clears close-on-exec and
# execs the command with `--fuse-fd <fd>:<hex(mountpoint)>` appended, so the new fsdaemon adopts
# the FUSE connections of the dead one. A missing file or a dead holder is skipped: the command
# then starts as it would without the launcher. The pid stays the same (exec), so systemd's main
# pid is the fsdaemon's. x86_64 and aarch64 share the numbers of the pidfd calls (434, 438).
use strict; use warnings; use Fcntl;
$^F = 100000;
my $file = shift @ARGV;
my @cmd = @ARGV;
my (@extra, @keep);
if (open(my $in, '<', $file)) {
  while (my $l = <$in>) {
    chomp $l;
    my ($pid, $fd, $hex) = split /\t/, $l;
    next unless defined $hex && $pid =~ /^\d+$/ && $fd =~ /^\d+$/ && $hex =~ /^[0-9a-f]+$/;
    my $pidfd = syscall(434, $pid + 0, 0);
    next if $pidfd < 0;
    my $nfd = syscall(438, $pidfd, $fd + 0, 0);
    if (open(my $p, '<&=', $pidfd)) { close($p) }
    next if $nfd < 0;
    open(my $h, '+<&=', $nfd) or next;
    my $flags = fcntl($h, F_GETFD, 0);
    fcntl($h, F_SETFD, $flags & ~FD_CLOEXEC);
    push @keep, $h;
    push @extra, '--fuse-fd', "$nfd:$hex";
  }
  close($in);
}
exec { $cmd[0] } @cmd, @extra or die "naiad fsd launcher: exec $cmd[0]: $!\n";
