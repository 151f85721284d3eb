package relay

import (
	"net/netip"
	"sync"
	"testing"
)

// TestFlowTable: flows from many goroutines are entered and removed with
// ids of their own; per-client counts hold their limit under concurrency
// and return to nothing; lockAll sees every flow.
func TestFlowTable(t *testing.T) {
	var tb flowTable
	tb.init()
	const workers, each = 8, 500
	client := netip.MustParseAddr("10.0.0.1")
	var wg sync.WaitGroup
	var mu sync.Mutex
	ids := map[uint64]bool{}
	over := 0
	held := make(chan struct{}, workers*each)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				f := &flow{}
				tb.add(f)
				mu.Lock()
				if ids[f.id] {
					t.Errorf("id %d given twice", f.id)
				}
				ids[f.id] = true
				mu.Unlock()
				if tb.take(perClientOf, client, 100) {
					held <- struct{}{}
				} else {
					mu.Lock()
					over++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	close(held)
	if got := len(held); got != 100 || over != workers*each-100 {
		t.Errorf("per-client limit 100: %d taken, %d refused", got, over)
	}
	for range held {
		tb.give(perClientOf, client)
	}
	if n := tb.byClient(client).perClient[client]; n != 0 {
		t.Errorf("count after release: %d", n)
	}
	n := 0
	tb.lockAll()
	for i := range tb.shards {
		n += len(tb.shards[i].flows)
	}
	tb.unlockAll()
	if n != workers*each {
		t.Errorf("%d flows in the table, want %d", n, workers*each)
	}
	removed := 0
	tb.each(func(*flow) {})
	for id := range ids {
		tb.remove(&flow{id: id}, func() { removed++ })
	}
	if removed != workers*each {
		t.Errorf("then ran %d times", removed)
	}
	tb.each(func(f *flow) { t.Errorf("flow %d left", f.id) })
	if !tb.take(perClientOf, client, -1) {
		t.Error("no limit refused")
	}
}
