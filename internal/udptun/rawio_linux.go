package udptun

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The data path's system calls (TUN read and write, recvmmsg, sendmmsg)
// are made with RawSyscall, inside RawConn callbacks on non-blocking fds:
// they never wait (EAGAIN sends the goroutine to the netpoller instead), so
// the goroutine keeps its P for the call. With unix.Syscall the runtime
// marks the P as in a system call, and a call that runs longer than
// sysmon's 20 us tick — a sendmmsg over veth runs the peer's whole UDP
// receive in the caller's thread, a TUN write the forwarding into the
// container and its TCP receive — has its P handed to another thread, which
// costs a futex wake-up on the way out and back (a hypervisor exit on a
// VM). At --max-procs 1 in the lab that was 15-30 % of udp throughput
// (docs/udp.md, "System calls").

// rawRead is read(2) without entersyscall.
func rawRead(fd uintptr, b []byte) (int, unix.Errno) {
	if len(b) == 0 {
		return 0, 0
	}
	r, _, errno := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(r), errno
}

// rawWritev is writev(2) without entersyscall.
func rawWritev(fd uintptr, iovs []unix.Iovec) (int, unix.Errno) {
	if len(iovs) == 0 {
		return 0, 0
	}
	r, _, errno := unix.RawSyscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&iovs[0])), uintptr(len(iovs)))
	return int(r), errno
}
