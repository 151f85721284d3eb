package datapath

import (
	"errors"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestResetTakenByWriteIsNoFIN: a reset's error is reported once, to
// whichever call on the socket comes first, and a read after it finds a
// plain EOF. When the direction writing to a leg takes the error (its
// send fails with ECONNRESET), the direction reading that leg must still
// pass the reset on, not a FIN. Here the client's reset has come and a
// send on the relay's client leg has taken its error, as the down
// direction's would, before the up direction reads the leg: the server
// must see a reset, the flow end as reset-client. (Before, the server got
// a FIN, and the up direction, watching a closed socket with no error
// left to report, was woken by the shard's wait loop over and over,
// tens of thousands of times a second, until the flow ended.)
func TestResetTakenByWriteIsNoFIN(t *testing.T) {
	for _, raw := range []bool{false, true} { // New, or NewFDs
		client, relayIn := tcpPair(t)
		relayOut, server := tcpPair(t)
		client.SetLinger(0)
		client.Close()
		for i := 0; tcpState(relayIn) != unix.BPF_TCP_CLOSE; i++ {
			if i == 1000 {
				t.Fatal("the client's reset never arrived")
			}
			time.Sleep(2 * time.Millisecond)
		}
		// The other direction's send takes the reset's error.
		if _, err := relayIn.Write([]byte("answer")); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("send on the reset leg: %v, want ECONNRESET", err)
		}
		ch := make(chan Result, 1)
		s0 := ReadStats()
		if raw {
			NewFDs(rawFD(t, relayIn), rawFD(t, relayOut), Options{}, func(r Result) { ch <- r }).Run()
		} else {
			New(relayIn, relayOut, Options{}, func(r Result) { ch <- r }).Run()
		}
		server.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := server.Read(make([]byte, 1))
		time.Sleep(500 * time.Millisecond)
		wakes := ReadStats().Wakes - s0.Wakes
		server.Close()
		var r Result
		select {
		case r = <-ch:
		case <-time.After(10 * time.Second):
			t.Fatal("the flow did not end")
		}
		if !errors.Is(err, syscall.ECONNRESET) || r.Reason != ReasonResetClient {
			t.Errorf("NewFDs %v: the server read %v, the flow ended %v (after %d wakes); want a reset, reset-client", raw, err, r.Reason, wakes)
		}
		if wakes > 100 {
			t.Errorf("NewFDs %v: %d wakes of a flow that moved no byte", raw, wakes)
		}
	}
}
