//go:build !linux

package netns

import (
	"errors"
	"os/exec"
)

// Create is only supported on Linux.
func Create(name string) (NsHandle, error) { return None(), errors.ErrUnsupported }

// CreateAt is only supported on Linux.
func CreateAt(path string) (NsHandle, error) { return None(), errors.ErrUnsupported }

// DeleteAt is only supported on Linux.
func DeleteAt(path string) error { return errors.ErrUnsupported }

// Delete is only supported on Linux.
func Delete(name string) error { return errors.ErrUnsupported }

// Open is only supported on Linux.
func Open(name string) (NsHandle, error) { return None(), errors.ErrUnsupported }

// Do is only supported on Linux.
func Do(h NsHandle, fn func() error) error { return errors.ErrUnsupported }

// StartIn is only supported on Linux.
func StartIn(h NsHandle, cmd *exec.Cmd) error { return errors.ErrUnsupported }
