package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"halfway/netlab"
)

// sink counts the bytes of one connection and records when the first and
// last bytes of a measurement window arrived.
type sink struct {
	ln    net.Listener
	bytes atomic.Int64
}

func newSink(h *netlab.Host, port int) (*sink, error) { return newSinkWith(h, port, false) }

// newSinkWith is newSink on an MPTCP listener when mptcp is set.
func newSinkWith(h *netlab.Host, port int, mptcp bool) (*sink, error) {
	var ln net.Listener
	err := h.Do(func() (err error) {
		var lc net.ListenConfig
		lc.SetMultipathTCP(mptcp)
		ln, err = lc.Listen(context.Background(), "tcp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		return nil, err
	}
	s := &sink{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 256<<10)
				for {
					n, err := c.Read(buf)
					s.bytes.Add(int64(n))
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return s, nil
}

func (s *sink) Close() error { return s.ln.Close() }

// bulkResult is one bulk transfer measured over a window after warm-up.
type bulkResult struct {
	Goodput float64 // payload bit/s seen by the receiver in the window
	Window  time.Duration
	Bytes   int64
}

// bulk sends as fast as TCP allows from h to addr for warm+window and
// measures the receiver's goodput during the window. sample, if not nil, is
// called at the window's start and end (for emulator counters, CPU time).
func bulk(ctx context.Context, h *netlab.Host, s *sink, addr string, warm, window time.Duration, sample func()) (bulkResult, error) {
	c, err := h.Dial(ctx, "tcp", addr)
	if err != nil {
		return bulkResult{}, err
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 256<<10)
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = c.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
			if _, err := c.Write(buf); err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					continue
				}
				werr = err
				return
			}
		}
	}()
	defer func() {
		if stop != nil {
			close(stop)
			wg.Wait()
		}
		c.Close()
	}()
	if !sleepCtx(ctx, warm) {
		return bulkResult{}, ctx.Err()
	}
	b0, t0 := s.bytes.Load(), time.Now()
	if sample != nil {
		sample()
	}
	if !sleepCtx(ctx, window) {
		return bulkResult{}, ctx.Err()
	}
	b1, t1 := s.bytes.Load(), time.Now()
	if sample != nil {
		sample()
	}
	close(stop)
	wg.Wait()
	stop = nil
	if werr != nil {
		return bulkResult{}, werr
	}
	d := t1.Sub(t0)
	return bulkResult{Goodput: float64(b1-b0) * 8 / d.Seconds(), Window: d, Bytes: b1 - b0}, nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// udpLoss sends n numbered datagrams from h to the receiver on dst and
// returns how many distinct ones arrived. Sending is paced so that no
// socket buffer on the way drops anything: every loss is the link's.
func udpLoss(ctx context.Context, h, dst *netlab.Host, port, n int) (received int, err error) {
	pc, err := dst.ListenPacket("udp", fmt.Sprintf(":%d", port))
	if err != nil {
		return 0, err
	}
	defer pc.Close()
	// Every datagram must fit in the receiver's buffer while it is late.
	if u, ok := pc.(*net.UDPConn); ok {
		_ = u.SetReadBuffer(16 << 20)
	}
	seen := make([]bool, n)
	done := make(chan int, 1)
	go func() {
		buf := make([]byte, 2048)
		got := 0
		for {
			m, _, err := pc.ReadFrom(buf)
			if err != nil {
				done <- got
				return
			}
			if m >= 4 {
				if i := int(binary.BigEndian.Uint32(buf)); i < n && !seen[i] {
					seen[i] = true
					got++
				}
			}
		}
	}()
	c, err := h.Dial(ctx, "udp", fmt.Sprintf("%s:%d", dst.Addr(), port))
	if err != nil {
		return 0, err
	}
	defer c.Close()
	payload := make([]byte, 1000)
	for i := range n {
		binary.BigEndian.PutUint32(payload, uint32(i))
		if _, err := c.Write(payload); err != nil {
			return 0, fmt.Errorf("udp send %d: %w", i, err)
		}
		if i%20 == 19 {
			time.Sleep(2 * time.Millisecond) // ≈ 10,000 datagrams/s at most
		}
	}
	// Let the last datagrams cross the link before counting.
	time.Sleep(500 * time.Millisecond)
	_ = pc.SetReadDeadline(time.Now())
	return <-done, nil
}
