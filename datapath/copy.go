package datapath

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// bufCopy is the user-space fallback: src → dst through a pooled buffer.
func bufCopy(dst, src *net.TCPConn, cnt *atomic.Int64, f *flow) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var total int64
	f.armIdle(src)
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			m, werr := dst.Write(buf[:n])
			total += int64(m)
			if cnt != nil {
				cnt.Add(int64(m))
			}
			f.touch()
			if werr != nil {
				return total, sideErr{read: false, reset: isReset(werr), err: werr}
			}
			f.armIdle(src)
		}
		switch {
		case rerr == nil:
		case errors.Is(rerr, io.EOF):
			return total, nil
		case errors.Is(rerr, os.ErrDeadlineExceeded):
			if f.idleExpired(src) {
				return total, errIdle
			}
		default:
			return total, sideErr{read: true, reset: isReset(rerr), err: rerr}
		}
	}
}
