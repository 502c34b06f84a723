package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// Ping sends ICMP echo requests from one target ("node1/c1") to another
// ("node2/c1", or a node) at opts.Interval and counts the replies. The
// socket is a raw ICMP socket opened inside the source namespace; replies
// are matched by echo ID, sequence and payload, so several pings may run at
// once from the same namespace. It returns when Count requests were sent
// (or ctx ends) and the replies came in or opts.Wait passed.
func (l *Lab) Ping(ctx context.Context, from, to string, opts PingOptions) (PingResult, error) {
	src, err := l.NS(from)
	if err != nil {
		return PingResult{}, err
	}
	dst, err := l.IP(to)
	if err != nil {
		return PingResult{}, err
	}
	return ping(ctx, src, dst, opts)
}

func ping(ctx context.Context, ns string, dst netip.Addr, opts PingOptions) (PingResult, error) {
	opts = opts.withDefaults()
	var conn *icmp.PacketConn
	err := doInNS(ns, func() error {
		var err error
		conn, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	if err != nil {
		return PingResult{}, fmt.Errorf("open icmp socket in netns %s: %w", ns, err)
	}
	defer conn.Close()

	var idb [2]byte
	_, _ = rand.Read(idb[:]) // never fails (crypto/rand)
	id := binary.BigEndian.Uint16(idb[:])
	tr := newPingTracker(opts.Size)

	recvDone := make(chan error, 1)
	go func() { recvDone <- receiveEcho(conn, dst, id, tr) }()

	sendErr := sendEcho(ctx, conn, dst, id, tr, opts)
	// Wait for outstanding replies, then stop the receiver.
	deadline := time.Now().Add(opts.Wait)
	for tr.outstanding() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	_ = conn.SetReadDeadline(time.Now())
	recvErr := <-recvDone
	res := tr.snapshot(opts.Interval)
	if sendErr != nil {
		return res, fmt.Errorf("ping %s from netns %s: %w", dst, ns, sendErr)
	}
	if recvErr != nil {
		return res, fmt.Errorf("ping %s from netns %s: %w", dst, ns, recvErr)
	}
	return res, nil
}

func sendEcho(ctx context.Context, conn *icmp.PacketConn, dst netip.Addr, id uint16, tr *pingTracker, opts PingOptions) error {
	to := &net.IPAddr{IP: dst.AsSlice()}
	t := time.NewTicker(opts.Interval)
	defer t.Stop()
	for seq := 0; opts.Count == 0 || seq < opts.Count; seq++ {
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{
			ID: int(id), Seq: seq & 0xffff, Data: tr.payload,
		}}
		b, err := msg.Marshal(nil)
		if err != nil {
			return fmt.Errorf("encode echo request: %w", err)
		}
		tr.onSend(uint16(seq), time.Now())
		if _, err := conn.WriteTo(b, to); err != nil {
			// A send error (e.g. no route yet) is a lost ping, not a
			// failure of the measurement.
			_ = err
		}
		if opts.Count != 0 && seq == opts.Count-1 {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
	return nil
}

// receiveEcho reads until the socket's deadline, recording echo replies
// from dst with our ID.
func receiveEcho(conn *icmp.PacketConn, dst netip.Addr, id uint16, tr *pingTracker) error {
	buf := make([]byte, 1500)
	for {
		n, peer, err := conn.ReadFrom(buf)
		now := time.Now()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil
			}
			return fmt.Errorf("read icmp: %w", err)
		}
		ipa, ok := peer.(*net.IPAddr)
		if !ok {
			continue
		}
		if a, ok := netip.AddrFromSlice(ipa.IP); !ok || a.Unmap() != dst {
			continue
		}
		msg, err := icmp.ParseMessage(1, buf[:n]) // 1: ICMPv4
		if err != nil || msg.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		echo, ok := msg.Body.(*icmp.Echo)
		if !ok || uint16(echo.ID) != id {
			continue
		}
		tr.onReply(uint16(echo.Seq), echo.Data, now)
	}
}

// TCPCheck opens a listener on the destination's address inside its
// namespace, dials it from the source namespace, sends a line and expects
// it echoed back.
func (l *Lab) TCPCheck(ctx context.Context, from, to string) error {
	src, err := l.NS(from)
	if err != nil {
		return err
	}
	dstNS, err := l.NS(to)
	if err != nil {
		return err
	}
	dst, err := l.IP(to)
	if err != nil {
		return err
	}
	ln, err := listenInNS(dstNS, "tcp4", netAddr(dst, 0))
	if err != nil {
		return err
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() { served <- serveEchoOnce(ln) }()

	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	err = tcpExchange(ctx, src, ln.Addr().String(), fmt.Sprintf("hello from %s to %s\n", from, to))
	ln.Close() // unblocks Accept if the dial never arrived
	if serr := <-served; err == nil && serr != nil && !errors.Is(serr, net.ErrClosed) {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("tcp %s -> %s (%s): %w", from, to, ln.Addr(), err)
	}
	return nil
}

func serveEchoOnce(ln net.Listener) error {
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	_, err = io.Copy(c, io.LimitReader(c, 4096))
	return err
}

func tcpExchange(ctx context.Context, ns, addr, msg string) error {
	c, err := dialInNS(ctx, ns, "tcp4", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := io.WriteString(c, msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if !bytes.Equal(got, []byte(msg)) {
		return fmt.Errorf("echo mismatch: sent %q, got %q", msg, got)
	}
	return nil
}
