package ipam

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

const (
	lockFile         = "lock"
	lastReservedFile = "last_reserved"
	// tempPrefix starts the name of writeTemp's files.
	tempPrefix = ".tmp-"
)

// Store keeps the allocations of one CNI network on disk.
//
// Every method takes an exclusive flock(2) on <dir>/lock for its whole
// read-modify-write, so concurrent plugin processes (and goroutines: each
// call opens its own file description) never hand out the same address.
// A Store holds no open files between calls and needs no Close.
type Store struct {
	dir string
}

// Open returns the store for network under dataDir, creating its directory.
func Open(dataDir, network string) (*Store, error) {
	if !ValidNetworkName(network) {
		return nil, fmt.Errorf("open ipam store for network %q: invalid network name", network)
	}
	dir := filepath.Join(dataDir, network)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("open ipam store %s: %w", dir, err)
	}
	return &Store{dir: dir}, nil
}

// Dir is the directory holding the network's allocations.
func (s *Store) Dir() string { return s.dir }

// Allocation is the outcome of Allocate.
type Allocation struct {
	// Addr is the address with the pool's prefix length (10.244.3.7/24).
	Addr netip.Prefix
	// Reused is true when the attachment already held Addr, so a caller
	// rolling back must not release it.
	Reused bool
}

// Allocate returns the address att holds in pool, or reserves a new one.
// Addresses att holds outside pool (the node's subnet changed) are neither
// returned nor freed here: Release and GC free them.
func (s *Store) Allocate(pool Pool, att Attachment) (Allocation, error) {
	if err := att.validate(); err != nil {
		return Allocation{}, err
	}
	var out Allocation
	err := s.locked(func() error {
		recs, err := s.list()
		if err != nil {
			return err
		}
		taken := make(map[netip.Addr]bool, len(recs))
		for _, r := range recs {
			if r.Attachment == att && pool.Contains(r.Addr) {
				out = Allocation{Addr: pool.Prefix(r.Addr), Reused: true}
				return nil
			}
			taken[r.Addr] = true
		}
		last := s.lastReserved()
		addr, err := Next(pool, last, func(a netip.Addr) bool { return taken[a] })
		if err != nil {
			return err
		}
		if err := s.writeRecord(addr, att); err != nil {
			return err
		}
		// last_reserved is a hint: losing it (or finding it empty after a
		// crash of the node) only means the next scan starts at the
		// beginning, so it is not synced and a failed write does not fail
		// the allocation.
		_ = writeHint(s.dir, lastReservedFile, []byte(addr.String()+"\n"))
		out = Allocation{Addr: pool.Prefix(addr)}
		return nil
	})
	if err != nil {
		return Allocation{}, fmt.Errorf("allocate address for %s in %s: %w", att, pool.Subnet, err)
	}
	return out, nil
}

// Lookup returns the addresses att holds, in any subnet, sorted.
func (s *Store) Lookup(att Attachment) ([]netip.Addr, error) {
	var out []netip.Addr
	err := s.locked(func() error {
		recs, err := s.list()
		for _, r := range recs {
			if r.Attachment == att {
				out = append(out, r.Addr)
			}
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("look up addresses of %s: %w", att, err)
	}
	return out, nil
}

// Release frees every address att holds and returns them. Releasing an
// attachment that holds nothing is not an error.
func (s *Store) Release(att Attachment) ([]netip.Addr, error) {
	return s.release(func(r Record) bool { return r.Attachment == att }, "release addresses of "+att.String())
}

// ReleaseAddr frees addr if att holds it. A rollback uses it to undo exactly
// the allocation it made.
func (s *Store) ReleaseAddr(addr netip.Addr, att Attachment) error {
	_, err := s.release(func(r Record) bool { return r.Addr == addr && r.Attachment == att },
		fmt.Sprintf("release address %s of %s", addr, att))
	return err
}

// GC frees every address whose attachment keep rejects and whose record was
// written before notAfter, and returns the freed records. The age limit
// protects an ADD that has allocated but whose attachment the runtime has not
// recorded yet, when GC races with it.
//
// GC also removes the temporary files of writers that died mid-write (a
// plugin killed between creating a record's temporary file and removing it).
func (s *Store) GC(keep func(Attachment) bool, notAfter time.Time) ([]Record, error) {
	var freed []Record
	err := s.locked(func() error {
		if err := s.removeTemps(); err != nil {
			return err
		}
		recs, err := s.list()
		if err != nil {
			return err
		}
		for _, r := range recs {
			if keep(r.Attachment) {
				continue
			}
			fi, err := os.Stat(filepath.Join(s.dir, r.Addr.String()))
			if err != nil || fi.ModTime().After(notAfter) {
				continue
			}
			if err := removeIfExists(filepath.Join(s.dir, r.Addr.String())); err != nil {
				return err
			}
			freed = append(freed, r)
		}
		return nil
	})
	if err != nil {
		return freed, fmt.Errorf("garbage-collect addresses in %s: %w", s.dir, err)
	}
	return freed, nil
}

// List returns every allocation, sorted by address.
func (s *Store) List() ([]Record, error) {
	var out []Record
	err := s.locked(func() (err error) {
		out, err = s.list()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list addresses in %s: %w", s.dir, err)
	}
	return out, nil
}

// removeTemps deletes every temporary file (writeTemp's ".tmp-*") in the
// store. Temporary files are only written while holding the lock, and the
// caller holds it now, so each one left belongs to a process that died
// before it could remove it (found by TestCrashSafety in internal/cni).
func (s *Store) removeTemps() error {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("read %s: %w", s.dir, err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tempPrefix) {
			if err := removeIfExists(filepath.Join(s.dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *Store) release(match func(Record) bool, what string) ([]netip.Addr, error) {
	var freed []netip.Addr
	err := s.locked(func() error {
		recs, err := s.list()
		if err != nil {
			return err
		}
		for _, r := range recs {
			if !match(r) {
				continue
			}
			if err := removeIfExists(filepath.Join(s.dir, r.Addr.String())); err != nil {
				return err
			}
			freed = append(freed, r.Addr)
		}
		return nil
	})
	if err != nil {
		return freed, fmt.Errorf("%s: %w", what, err)
	}
	return freed, nil
}

// list reads every address file. A file that cannot be parsed still counts
// as taken (it is returned with an empty attachment), so corruption can leak
// an address but never hand it out twice. The caller holds the lock.
func (s *Store) list() ([]Record, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", s.dir, err)
	}
	var out []Record
	for _, e := range ents {
		addr, err := netip.ParseAddr(e.Name())
		if err != nil || !e.Type().IsRegular() {
			continue // lock, last_reserved, temporary files
		}
		b, err := os.ReadFile(filepath.Join(s.dir, e.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", filepath.Join(s.dir, e.Name()), err)
		}
		att, _ := parseRecord(b)
		out = append(out, Record{Addr: addr, Attachment: att})
	}
	slices.SortFunc(out, func(a, b Record) int { return a.Addr.Compare(b.Addr) })
	return out, nil
}

func (s *Store) lastReserved() netip.Addr {
	b, err := os.ReadFile(filepath.Join(s.dir, lastReservedFile))
	if err != nil {
		return netip.Addr{}
	}
	a, _ := netip.ParseAddr(string(trimNewline(b)))
	return a
}

// writeRecord creates the file for addr holding att. It writes a temporary
// file and hard-links it into place, so the address file appears complete
// or not at all, and the link fails if the address is already taken.
func (s *Store) writeRecord(addr netip.Addr, att Attachment) error {
	tmp, err := writeTemp(s.dir, formatRecord(att), true)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	path := filepath.Join(s.dir, addr.String())
	if err := os.Link(tmp, path); err != nil {
		return fmt.Errorf("reserve %s: %w", path, err)
	}
	return syncDir(s.dir)
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// ValidNetworkName applies the CNI rule for network names,
// ^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$ (skel and libcni enforce the same); it also
// keeps the name safe as a single directory name.
func ValidNetworkName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '_' && c != '.' && c != '-') {
			return false
		}
	}
	return true
}
