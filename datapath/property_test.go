package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The property test: randomized flows through every data path
// configuration, checked against the contract of docs/relay.md ("Data
// path and TCP semantics"): every byte exactly once and in order, a FIN
// passed on as a FIN (and only after every byte), a reset passed on as a
// reset, the flow ends, and nothing (descriptors, pipes, parked
// directions, detached flows) is left behind.
//
// HALFWAY_PROP_SEED replays a run (its seed is printed on failure);
// HALFWAY_PROP_TRIALS sets the trials per configuration (24), and
// HALFWAY_PROP_CONFIG runs one configuration alone.

// propConfig is a data path configuration under test.
type propConfig struct {
	name    string
	raw     bool // NewFDs: a plain flow, detached from its start
	sockmap bool
	opt     Options
}

var propConfigs = []propConfig{
	{name: "splice", opt: Options{}},
	{name: "copy", opt: Options{ForceCopy: true}},
	{name: "sockmap", sockmap: true, opt: Options{Sockmap: true}},
	{name: "park-1ms", opt: Options{ParkAfter: time.Millisecond}},
	{name: "detach", opt: Options{DetachAfter: time.Millisecond}},
	{name: "plain", raw: true, opt: Options{DetachAfter: time.Millisecond}},
}

// How a side of a trial ends.
const (
	endFIN        = iota // CloseWrite after its last byte
	endRST               // SO_LINGER 0 and Close before write rstAt
	endFINThenRST        // CloseWrite, then a reset a little later
)

// propSide is what one application end (client or server) does.
type propSide struct {
	chunks    []int           // the sizes of its writes
	pauses    []time.Duration // before each write
	end       int
	rstAt     int           // endRST: resets instead of this write (0..len(chunks))
	rstDelay  time.Duration // endFINThenRST: after the FIN
	readDelay time.Duration // before its first read: the relay's way to it fills
	readBuf   int
	slowReads int           // reads that sleep readPause after them
	readPause time.Duration //
	total     int           // sum of chunks
}

func (s *propSide) String() string {
	end := map[int]string{endFIN: "FIN", endRST: "RST@" + strconv.Itoa(s.rstAt), endFINThenRST: "FIN+RST"}[s.end]
	return fmt.Sprintf("{%d writes, %d B, end %s, readDelay %v, readBuf %d, slowReads %d×%v}",
		len(s.chunks), s.total, end, s.readDelay, s.readBuf, s.slowReads, s.readPause)
}

// propPlan is one trial: what the client and the server do.
type propPlan struct {
	client, server propSide
	longPause      int // before this client write (0: none), long enough to detach
}

func genSide(r *rand.Rand) propSide {
	var s propSide
	n := r.IntN(12)
	for range n {
		var size int
		switch r.IntN(4) {
		case 0:
			size = 1 + r.IntN(100) // a message
		case 1:
			size = 1 + r.IntN(4<<10)
		case 2:
			size = 1 + r.IntN(40<<10)
		default:
			size = 1 + r.IntN(400<<10) // a burst, past the inline budget at times
		}
		s.chunks = append(s.chunks, size)
		s.total += size
		var p time.Duration
		if r.IntN(3) == 0 {
			p = time.Duration(r.IntN(20)) * time.Millisecond
		}
		s.pauses = append(s.pauses, p)
	}
	switch x := r.IntN(10); {
	case x < 6:
		s.end = endFIN
	case x < 9:
		s.end, s.rstAt = endRST, r.IntN(n+1)
	default:
		s.end, s.rstDelay = endFINThenRST, time.Duration(r.IntN(30))*time.Millisecond
	}
	if r.IntN(3) == 0 {
		s.readDelay = time.Duration(50+r.IntN(250)) * time.Millisecond
	}
	s.readBuf = []int{1 << 10, 16 << 10, 64 << 10}[r.IntN(3)]
	if r.IntN(3) == 0 {
		s.slowReads, s.readPause = 1+r.IntN(40), time.Duration(1+r.IntN(5))*time.Millisecond
	}
	return s
}

func genPlan(r *rand.Rand, cfg propConfig) propPlan {
	p := propPlan{client: genSide(r), server: genSide(r)}
	if cfg.opt.DetachAfter > 0 && len(p.client.chunks) > 1 && r.IntN(2) == 0 {
		// Idle long enough for the sweep to detach the flow (four sweeps).
		p.longPause = 1 + r.IntN(len(p.client.chunks)-1)
	}
	return p
}

// propBytes is side's stream: 8-byte words holding their own offset
// (xor key), so that a wrong word says where it came from.
func propBytes(key uint64, n int) []byte {
	b := make([]byte, (n+7)&^7)
	for o := 0; o < len(b); o += 8 {
		binary.LittleEndian.PutUint64(b[o:], uint64(o)^key)
	}
	return b[:n]
}

// propRead is what a side's reader saw.
type propRead struct {
	n        int   // bytes read
	eof      bool  // it ended with EOF
	err      error // or with this error
	mismatch string
	state    uint8 // the socket's TCP state as the EOF was read
}

// propWrite is what a side's writer did.
type propWrite struct {
	n     int  // bytes written
	fin   bool // it sent its FIN
	reset bool // it reset its connection
	err   error
}

func runSide(c *net.TCPConn, s *propSide, out []byte, longPause int, w *propWrite, wg *sync.WaitGroup) {
	defer wg.Done()
	deadline := time.Now().Add(30 * time.Second)
	c.SetWriteDeadline(deadline)
	off := 0
	for i, size := range s.chunks {
		if s.end == endRST && i == s.rstAt {
			break
		}
		time.Sleep(s.pauses[i])
		if longPause > 0 && i == longPause {
			time.Sleep(1500 * time.Millisecond)
		}
		m, err := c.Write(out[off : off+size])
		off += m
		w.n = off
		if err != nil {
			w.err = err
			return
		}
	}
	switch s.end {
	case endRST:
		w.reset = true
		c.SetLinger(0)
		c.Close()
		return
	case endFINThenRST:
		c.CloseWrite()
		w.fin = true
		time.Sleep(s.rstDelay)
		w.reset = true
		c.SetLinger(0)
		c.Close()
		return
	}
	w.err = c.CloseWrite()
	w.fin = w.err == nil
}

func readSide(c *net.TCPConn, s *propSide, want []byte, rd *propRead, wg *sync.WaitGroup) {
	defer wg.Done()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	time.Sleep(s.readDelay)
	buf := make([]byte, s.readBuf)
	for i := 0; ; i++ {
		m, err := c.Read(buf)
		if m > 0 && rd.mismatch == "" {
			switch {
			case rd.n+m > len(want):
				rd.mismatch = fmt.Sprintf("%d bytes past the %d sent", rd.n+m-len(want), len(want))
			default:
				for j := range m {
					if buf[j] != want[rd.n+j] {
						at := rd.n + j
						rd.mismatch = fmt.Sprintf("byte %d differs", at)
						if w := at &^ 7; w+8 <= rd.n+m && w >= rd.n {
							got := binary.LittleEndian.Uint64(buf[w-rd.n:])
							rd.mismatch += fmt.Sprintf(" (the word at %d holds the one of offset %d)", w, got^binary.LittleEndian.Uint64(want[w:])^uint64(w))
						}
						break
					}
				}
			}
		}
		rd.n += m
		if err == io.EOF {
			rd.eof, rd.state = true, tcpState(c)
			return
		}
		if err != nil {
			rd.err = err
			return
		}
		if i < s.slowReads {
			time.Sleep(s.readPause)
		}
	}
}

// tcpState is c's TCP state (unix.BPF_TCP_*), 0 if unknown.
func tcpState(c *net.TCPConn) uint8 {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	var st uint8
	rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			st = info.State
		}
	})
	return st
}

// runPlan runs one trial and returns what broke the contract, if anything.
func runPlan(t *testing.T, cfg propConfig, plan propPlan, key uint64) string {
	client, relayIn := tcpPair(t)
	relayOut, server := tcpPair(t)
	res := make(chan Result, 1)
	opt := cfg.opt
	var f *Flow
	if cfg.raw {
		f = NewFDs(rawFD(t, relayIn), rawFD(t, relayOut), opt, func(r Result) { res <- r })
	} else {
		f = New(relayIn, relayOut, opt, func(r Result) { res <- r })
	}
	go f.Run()
	up, down := propBytes(key, plan.client.total), propBytes(^key, plan.server.total)
	var cw, sw propWrite
	var cr, sr propRead
	var wg sync.WaitGroup
	wg.Add(4)
	go runSide(client, &plan.client, up, plan.longPause, &cw, &wg)
	go runSide(server, &plan.server, down, 0, &sw, &wg)
	go readSide(client, &plan.client, down, &cr, &wg)
	go readSide(server, &plan.server, up, &sr, &wg)
	wg.Wait()
	var r Result
	select {
	case r = <-res:
	case <-time.After(15 * time.Second):
		f.Abort()
		return fmt.Sprintf("the flow did not end (client: %v; server: %v)", sideReport(&cw, &cr), sideReport(&sw, &sr))
	}
	client.Close()
	server.Close()
	var bad []string
	anyReset := cw.reset || sw.reset
	// What reached a reader: a FIN (EOF while its socket is in a state
	// that a FIN brings, or after its own FIN), else a reset (ECONNRESET,
	// or an EOF in CLOSE: the same side's writer took the reset's error
	// first).
	check := func(dir string, w *propWrite, rd *propRead, rw *propWrite) {
		if rd.mismatch != "" {
			bad = append(bad, fmt.Sprintf("%s: %s", dir, rd.mismatch))
		}
		if rd.n > w.n {
			bad = append(bad, fmt.Sprintf("%s: %d bytes read, %d written", dir, rd.n, w.n))
		}
		if rw.reset && (!rw.fin || errors.Is(rd.err, net.ErrClosed)) {
			return // the reader's own side reset: it read until then
		}
		finState := rd.state == unix.BPF_TCP_CLOSE_WAIT || rd.state == unix.BPF_TCP_LAST_ACK ||
			rd.state == unix.BPF_TCP_CLOSING || rd.state == unix.BPF_TCP_TIME_WAIT
		// (After its own FIN, a socket that gets one is CLOSE; a reset
		// would have been the reader's ECONNRESET: no send took it.)
		fin := rd.eof && (finState || rw.fin)
		reset := errors.Is(rd.err, syscall.ECONNRESET) || rd.eof && !fin
		switch {
		case fin && !w.fin:
			bad = append(bad, fmt.Sprintf("%s: the reader saw a FIN the writer never sent (writer reset %v; %d of %d bytes)", dir, w.reset, rd.n, w.n))
		case fin && rd.n != w.n:
			bad = append(bad, fmt.Sprintf("%s: FIN after %d bytes, %d written", dir, rd.n, w.n))
		case reset && !w.reset && !rw.reset:
			bad = append(bad, fmt.Sprintf("%s: the reader saw a reset (%v, state %d), nobody reset", dir, rd.err, rd.state))
		case !fin && !reset:
			bad = append(bad, fmt.Sprintf("%s: the reader ended with %v after %d of %d bytes", dir, rd.err, rd.n, w.n))
		case w.reset && !w.fin && !reset:
			bad = append(bad, fmt.Sprintf("%s: the writer reset, the reader saw no reset", dir))
		}
		if !anyReset && w.err != nil {
			bad = append(bad, fmt.Sprintf("%s: no reset in the trial, yet the writer failed: %v", dir, w.err))
		}
	}
	check("up", &cw, &sr, &sw)
	check("down", &sw, &cr, &cw)
	if !anyReset && (r.Reason != ReasonClosed || r.Up != int64(cw.n) || r.Down != int64(sw.n)) {
		bad = append(bad, fmt.Sprintf("result %+v, want closed with %d up and %d down", r, cw.n, sw.n))
	}
	if anyReset && r.Reason != ReasonResetClient && r.Reason != ReasonResetServer && r.Reason != ReasonClosed {
		bad = append(bad, fmt.Sprintf("result %+v after a reset", r))
	}
	// A side that reset before any FIN of its own: the flow ends as its reset.
	if cw.reset && !cw.fin && !sw.reset && r.Reason != ReasonResetClient {
		bad = append(bad, fmt.Sprintf("the client reset mid-stream, result %+v", r))
	}
	if sw.reset && !sw.fin && !cw.reset && r.Reason != ReasonResetServer {
		bad = append(bad, fmt.Sprintf("the server reset mid-stream, result %+v", r))
	}
	if r.Up > int64(cw.n) || r.Down > int64(sw.n) {
		bad = append(bad, fmt.Sprintf("result %+v counts more than the %d up and %d down written", r, cw.n, sw.n))
	}
	if len(bad) == 0 {
		return ""
	}
	return fmt.Sprintf("%v (client: %v; server: %v; result %+v)", bad, sideReport(&cw, &cr), sideReport(&sw, &sr), r)
}

func sideReport(w *propWrite, rd *propRead) string {
	return fmt.Sprintf("wrote %d fin %v reset %v err %v; read %d eof %v (state %d) err %v",
		w.n, w.fin, w.reset, w.err, rd.n, rd.eof, rd.state, rd.err)
}

func countFDs() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}

// TestFlowProperties runs randomized flows through each data path
// configuration (see above).
func TestFlowProperties(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("HALFWAY_PROP_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		seed = v
	}
	trials := 24
	if s := os.Getenv("HALFWAY_PROP_TRIALS"); s != "" {
		trials, _ = strconv.Atoi(s)
	}
	only := os.Getenv("HALFWAY_PROP_CONFIG")
	sockmapOK := os.Geteuid() == 0 && EnableSockmap(4096, 256<<10) == nil
	// Earlier tests' flows may still be ending.
	time.Sleep(300 * time.Millisecond)
	Drain()
	fd0, s0 := countFDs(), ReadStats()
	const parallel = 6
	for ci, cfg := range propConfigs {
		if only != "" && only != cfg.name {
			continue
		}
		t.Run(cfg.name, func(t *testing.T) {
			if cfg.sockmap && !sockmapOK {
				t.Skip("the sockmap program needs root")
			}
			c0 := ReadStats()
			sem := make(chan struct{}, parallel)
			var wg sync.WaitGroup
			for i := range trials {
				r := rand.New(rand.NewPCG(seed, uint64(ci)<<32|uint64(i)))
				plan := genPlan(r, cfg)
				sem <- struct{}{}
				wg.Add(1)
				go func() {
					defer func() { <-sem; wg.Done() }()
					if msg := runPlan(t, cfg, plan, r.Uint64()); msg != "" {
						t.Errorf("seed %d config %s trial %d (client %v, server %v, long pause before write %d): %s",
							seed, cfg.name, i, &plan.client, &plan.server, plan.longPause, msg)
					}
				}()
			}
			wg.Wait()
			c := ReadStats()
			// What the trials exercised (for -v).
			t.Logf("wakes %d, handoffs %d, attaches %d, sockmap flows %d, takeovers %d, resumes %d",
				c.Wakes-c0.Wakes, c.Handoffs-c0.Handoffs, c.Attaches-c0.Attaches,
				c.SockmapFlows-c0.SockmapFlows, c.SockmapTakeovers-c0.SockmapTakeovers, c.SockmapResumes-c0.SockmapResumes)
		})
	}
	// Every flow is over: its descriptors, pipes and counts must be back.
	var fds int
	var st Stats
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		Drain()
		fds, st = countFDs(), ReadStats()
		if fds <= fd0 && st.Parked == s0.Parked && st.Detached == s0.Detached {
			break
		}
	}
	if fds > fd0 {
		t.Errorf("seed %d: %d descriptors open after the flows, %d before (pipes now: %d)", seed, fds, fd0, len(pipeFDs()))
	}
	if st.Parked != s0.Parked || st.Detached != s0.Detached {
		t.Errorf("seed %d: parked %d→%d, detached %d→%d after every flow ended", seed, s0.Parked, st.Parked, s0.Detached, st.Detached)
	}
}
