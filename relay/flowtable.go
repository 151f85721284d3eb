package relay

import (
	"net/netip"
	"sync"
	"sync/atomic"
)

// flowShards spreads the flow table and the per-client counts over
// independent locks, so flows starting and ending on many cores do not
// queue on one mutex: a flow takes only its own shard's lock (by id) and
// its client's (by address).
const flowShards = 64

type flowShard struct {
	mu        sync.Mutex
	flows     map[uint64]*flow
	perClient map[netip.Addr]int // flows per clientKey
	hsClient  map[netip.Addr]int // handshakes per clientKey
	_         [64]byte           // shards' locks on cache lines of their own
}

type flowTable struct {
	nextID atomic.Uint64
	shards [flowShards]flowShard
}

func (t *flowTable) init() {
	for i := range t.shards {
		sh := &t.shards[i]
		sh.flows = map[uint64]*flow{}
		sh.perClient = map[netip.Addr]int{}
		sh.hsClient = map[netip.Addr]int{}
	}
}

func (t *flowTable) byID(id uint64) *flowShard { return &t.shards[id%flowShards] }

// byClient is the shard holding a client key's counts.
func (t *flowTable) byClient(key netip.Addr) *flowShard {
	b := key.As16()
	var h uint32 = 2166136261 // FNV-1a
	for _, c := range b {
		h = (h ^ uint32(c)) * 16777619
	}
	return &t.shards[h%flowShards]
}

// add gives f an id and enters it.
func (t *flowTable) add(f *flow) {
	f.id = t.nextID.Add(1)
	sh := t.byID(f.id)
	sh.mu.Lock()
	sh.flows[f.id] = f
	sh.mu.Unlock()
}

// remove takes f out; then, if set, runs under the same lock (so a reader
// holding every lock sees f either active or done, never both).
func (t *flowTable) remove(f *flow, then func()) {
	sh := t.byID(f.id)
	sh.mu.Lock()
	delete(sh.flows, f.id)
	if then != nil {
		then()
	}
	sh.mu.Unlock()
}

// each calls fn for every active flow, one shard locked at a time.
func (t *flowTable) each(fn func(*flow)) {
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for _, f := range sh.flows {
			fn(f)
		}
		sh.mu.Unlock()
	}
}

// lockAll and unlockAll hold every shard, for a consistent view.
func (t *flowTable) lockAll() {
	for i := range t.shards {
		t.shards[i].mu.Lock()
	}
}

func (t *flowTable) unlockAll() {
	for i := range t.shards {
		t.shards[i].mu.Unlock()
	}
}

// take counts one for key in the table pick chooses, unless it is at
// limit (limit < 0: no limit); give undoes it.
func (t *flowTable) take(pick func(*flowShard) map[netip.Addr]int, key netip.Addr, limit int) bool {
	sh := t.byClient(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	m := pick(sh)
	if limit >= 0 && m[key] >= limit {
		return false
	}
	m[key]++
	return true
}

func (t *flowTable) give(pick func(*flowShard) map[netip.Addr]int, key netip.Addr) {
	sh := t.byClient(key)
	sh.mu.Lock()
	m := pick(sh)
	if m[key]--; m[key] <= 0 {
		delete(m, key)
	}
	sh.mu.Unlock()
}

func perClientOf(sh *flowShard) map[netip.Addr]int { return sh.perClient }
func hsClientOf(sh *flowShard) map[netip.Addr]int  { return sh.hsClient }
