package netns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"

	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Create makes a new network namespace and bind-mounts it at RunDir/name
// (ip netns add name). It returns an open handle; the caller closes it. The
// calling goroutine's thread is never moved: the namespace is made on a
// dedicated locked thread that is moved back before it is released. Create
// fails with an error wrapping fs.ErrExist if the name is taken.
func Create(name string) (NsHandle, error) {
	if err := validName(name); err != nil {
		return None(), err
	}
	if err := ensureRunDir(); err != nil {
		return None(), fmt.Errorf("create netns %s: %w", name, err)
	}
	h, err := CreateAt(Path(name))
	if err != nil {
		return None(), fmt.Errorf("create netns %s: %w", name, err)
	}
	return h, nil
}

// CreateAt makes a new network namespace bind-mounted on path, a file it
// creates (it fails wrapping fs.ErrExist if path exists), and returns an
// open handle. Create uses it for RunDir/name; tulle run for a namespace in
// a container's state directory. On failure nothing is left at path.
func CreateAt(path string) (NsHandle, error) {
	// O_EXCL makes concurrent creators of the same path fail cleanly.
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return None(), err
	}
	f.Close()

	errc := make(chan error, 1)
	go func() { errc <- mountNew(path) }()
	if err := <-errc; err != nil {
		_ = DeleteAt(path) // the mount may or may not exist
		return None(), err
	}
	h, err := vnetns.GetFromPath(path)
	if err != nil {
		_ = DeleteAt(path)
		return None(), fmt.Errorf("open netns %s: %w", path, err)
	}
	return h, nil
}

// mountNew runs on its own goroutine: it unshares the thread into a fresh
// network namespace, bind-mounts that namespace on path and moves the thread
// back. The thread is unlocked only if it is back where it started.
func mountNew(path string) error {
	runtime.LockOSThread()
	orig, err := threadNS()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()

	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		// unshare failed: the thread did not move.
		runtime.UnlockOSThread()
		return fmt.Errorf("unshare net namespace: %w", err)
	}
	src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
	merr := unix.Mount(src, path, "none", unix.MS_BIND, "")
	if merr != nil {
		merr = fmt.Errorf("bind mount %s on %s: %w", src, path, merr)
	}
	if err := vnetns.Set(orig); err != nil {
		// Leave the thread locked: when this goroutine returns the runtime
		// kills the thread rather than reuse it in the wrong namespace.
		return errors.Join(merr, fmt.Errorf("restore thread netns: %w", err))
	}
	runtime.UnlockOSThread()
	return merr
}

// ensureRunDir makes RunDir a shared mount point, as iproute2 does
// (ip/ipnetns.c netns_add), so namespaces mounted later propagate into mount
// namespaces cloned from this one (container runtimes, 'ip netns exec').
func ensureRunDir() error {
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", RunDir, err)
	}
	err := unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) {
		// Not a mount point yet: bind it onto itself (recursively, so the
		// mounts of a concurrent creator are carried along) and retry.
		if err := unix.Mount(RunDir, RunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind mount %s: %w", RunDir, err)
		}
		err = unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s a shared mount: %w", RunDir, err)
	}
	return nil
}

// Delete unmounts and removes RunDir/name (ip netns delete name). The
// namespace itself lives on while handles or processes still hold it. A name
// that does not exist is not an error.
func Delete(name string) error {
	if err := validName(name); err != nil {
		return err
	}
	return DeleteAt(Path(name))
}

// DeleteAt unmounts and removes a namespace file made by CreateAt; a path
// that does not exist is not an error.
func DeleteAt(path string) error {
	// EINVAL: not a mount point (a half-made namespace); ENOENT: gone.
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", path, err)
	}
	return nil
}

// Open returns a handle to the named namespace. The caller closes it.
func Open(name string) (NsHandle, error) {
	if err := validName(name); err != nil {
		return None(), err
	}
	h, err := vnetns.GetFromPath(Path(name))
	if err != nil {
		return None(), fmt.Errorf("open netns %s: %w", name, err)
	}
	return h, nil
}

// Do runs fn on a locked OS thread that has entered the namespace h, then
// moves the thread back. fn runs on a different goroutine than the caller;
// goroutines that fn starts do not run in h. Sockets fn opens and processes it
// forks stay in h. If the thread cannot be moved back it is left locked and
// the runtime discards it; Do then returns the restore error joined with fn's.
func Do(h NsHandle, fn func() error) error {
	if !h.IsOpen() {
		return fmt.Errorf("enter netns: handle %d is not open", int(h))
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := threadNS()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := vnetns.Set(h); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %d: %w", int(h), err)
			return
		}
		ferr := fn()
		if err := vnetns.Set(orig); err != nil {
			// Stay locked: see the package doc.
			errc <- errors.Join(ferr, fmt.Errorf("restore thread netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// StartIn starts cmd (cmd.Start) so that its process lives in namespace h:
// the fork happens on a thread inside h, and a child inherits the forking
// thread's namespaces. The caller waits for cmd as usual.
//
// SysProcAttr.Pdeathsig fires when the forking thread exits, not the process;
// StartIn's thread normally lives on in the runtime's pool, but a caller
// that relies on Pdeathsig should know the thread is not its own.
func StartIn(h NsHandle, cmd *exec.Cmd) error {
	if err := Do(h, cmd.Start); err != nil {
		return fmt.Errorf("start %s in netns: %w", cmd.Path, err)
	}
	return nil
}

// threadNS opens the calling thread's network namespace. The caller must
// have locked the thread.
func threadNS() (NsHandle, error) {
	h, err := vnetns.GetFromPath(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		return None(), fmt.Errorf("open thread netns: %w", err)
	}
	return h, nil
}
