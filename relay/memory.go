package relay

import (
	"errors"
	"sync/atomic"
	"time"

	"halfway/procmem"
)

// memStats count what the relay gave back (memory.release).
type memStats struct {
	releases    atomic.Int64
	binaryBytes atomic.Int64
}

// memoryLoop gives memory back once the relay has started, and again
// each time it has carried flows and then been idle for
// memory.release_after: start-up and bursts of flows leave free heap and
// mapped pages of the binary that an idle relay does not use.
func (s *Server) memoryLoop() {
	s.releaseMemory("started")
	const tick = time.Second
	t := time.NewTicker(tick)
	defer t.Stop()
	lastEnded := s.ended.Load()
	var lastBusy time.Time
	carried := false // flows since the last release
	for {
		select {
		case <-s.flowCtx.Done():
			return
		case now := <-t.C:
			n := s.ended.Load()
			if n != lastEnded || s.active.Load() > s.parkedCount() || s.handshakes.Load() > 0 || s.pending.Load() > 0 {
				lastEnded, lastBusy, carried = n, now, true
				continue
			}
			if !carried || now.Sub(lastBusy) < s.state.Load().cfg.Memory.ReleaseAfter.D() {
				continue
			}
			carried = false
			s.releaseMemory("idle")
		}
	}
}

// parkedCount is how many of the active flows are peers' pooled
// connections waiting for a request: a relay holding only those is idle.
func (s *Server) parkedCount() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int64(len(s.parked))
}

func (s *Server) releaseMemory(why string) {
	if !s.state.Load().cfg.Memory.Releases() {
		return
	}
	st, err := procmem.Release()
	if errors.Is(err, procmem.ErrNotSupported) {
		return
	}
	s.mem.releases.Add(1)
	s.mem.binaryBytes.Add(st.BinaryBytes)
	if err != nil {
		s.log.Warn("memory release incomplete", "why", why, "binary_bytes", st.BinaryBytes, "err", err)
		return
	}
	s.log.Debug("memory released", "why", why, "binary_bytes", st.BinaryBytes, "skipped_mappings", st.Skipped)
}
