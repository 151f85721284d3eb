package linkem

import "encoding/binary"

// VnetHdrLen is the size of struct virtio_net_hdr as AF_PACKET exchanges it
// with PACKET_VNET_HDR: the num_buffers field of the mergeable-buffer variant
// is never present on packet sockets.
const VnetHdrLen = 10

// Values of VnetHdr.Flags and VnetHdr.GSOType, mirroring
// include/uapi/linux/virtio_net.h.
const (
	VnetFlagNeedsCsum = 1
	VnetFlagDataValid = 2

	GSONone  = 0
	GSOTCPv4 = 1
	GSOUDP   = 3 // UFO: IP-fragments instead of segmenting; not supported by Segment.
	GSOTCPv6 = 4
	GSOUDPL4 = 5
	GSOECN   = 0x80
)

// VnetHdr is struct virtio_net_hdr. The kernel writes it little endian on
// packet sockets regardless of the virtio version in use.
type VnetHdr struct {
	Flags, GSOType                         uint8
	HdrLen, GSOSize, CsumStart, CsumOffset uint16
}

// vnetError lets the package's errors be constants, so returning one never
// allocates and there is no mutable package state.
type vnetError string

func (e vnetError) Error() string { return string(e) }

const errShortVnetHdr vnetError = "linkem: vnet header shorter than 10 bytes"

// ParseVnetHdr decodes the header at the start of b.
func ParseVnetHdr(b []byte) (VnetHdr, error) {
	if len(b) < VnetHdrLen {
		return VnetHdr{}, errShortVnetHdr
	}
	return VnetHdr{
		Flags:      b[0],
		GSOType:    b[1],
		HdrLen:     binary.LittleEndian.Uint16(b[2:]),
		GSOSize:    binary.LittleEndian.Uint16(b[4:]),
		CsumStart:  binary.LittleEndian.Uint16(b[6:]),
		CsumOffset: binary.LittleEndian.Uint16(b[8:]),
	}, nil
}

// Put encodes h into b[:VnetHdrLen]; it panics if b is shorter, like the
// encoding/binary Put functions, because that is a caller bug, not bad input.
func (h VnetHdr) Put(b []byte) {
	_ = b[VnetHdrLen-1]
	b[0] = h.Flags
	b[1] = h.GSOType
	binary.LittleEndian.PutUint16(b[2:], h.HdrLen)
	binary.LittleEndian.PutUint16(b[4:], h.GSOSize)
	binary.LittleEndian.PutUint16(b[6:], h.CsumStart)
	binary.LittleEndian.PutUint16(b[8:], h.CsumOffset)
}

// IsGSO reports whether the frame is a super-frame. The ECN bit alone does
// not make a frame GSO: it only qualifies a segmentation type.
func (h VnetHdr) IsGSO() bool { return h.GSOType&^GSOECN != GSONone }
