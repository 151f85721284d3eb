package linkem

import (
	"container/heap"
	"sync"
)

// maxFrame is the largest frame a wire reads, vnet header included: a
// 64 KiB GSO super-frame with headers fits with room to spare.
const maxFrame = 256 << 10

// pkt is one frame in flight. Buffers come in a few size classes so that
// thousands of MTU-sized packets in flight do not each hold 64 KiB.
type pkt struct {
	b     []byte // vnet header + frame, cap = class size
	n     int
	due   int64
	class uint8
}

var classSizes = [...]int{2 << 10, 16 << 10, 66 << 10, maxFrame}

var pools [len(classSizes)]sync.Pool

func getPkt(n int) *pkt {
	for c, size := range classSizes {
		if n <= size {
			if p, ok := pools[c].Get().(*pkt); ok {
				return p
			}
			return &pkt{b: make([]byte, size), class: uint8(c)}
		}
	}
	panic("linkem: frame larger than maxFrame") // callers bound n by maxFrame
}

func putPkt(p *pkt) {
	p.n, p.due = 0, 0
	pools[p.class].Put(p)
}

// pktHeap orders packets by due time, for links that may reorder.
type pktHeap []*pkt

func (h pktHeap) Len() int           { return len(h) }
func (h pktHeap) Less(i, j int) bool { return h[i].due < h[j].due }
func (h pktHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *pktHeap) Push(x any)        { *h = append(*h, x.(*pkt)) }
func (h *pktHeap) Pop() any {
	old := *h
	p := old[len(old)-1]
	*h = old[:len(old)-1]
	return p
}
func (h *pktHeap) push(p *pkt) { heap.Push(h, p) }
func (h *pktHeap) pop() *pkt   { return heap.Pop(h).(*pkt) }
