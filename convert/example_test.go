package convert_test

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"

	"halfway/convert"
)

func Example() {
	// Client: the first bytes of the connection to the converter.
	req := &convert.Message{
		Connect: &convert.Connect{Dst: netip.MustParseAddrPort("192.0.2.1:443")},
		Cookie:  []byte{0xde, 0xad, 0xbe, 0xef},
	}
	b, err := convert.AppendMessage(nil, req)
	if err != nil {
		panic(err)
	}
	fmt.Printf("% x\n", b)

	// Converter: read exactly one message; the early data stays in the stream.
	stream := bytes.NewReader(append(b, "hello"...))
	raw, err := convert.ReadRaw(stream)
	var m *convert.Message
	if err == nil {
		m, _, err = convert.Parse(raw)
	}
	var pe *convert.ProtocolError
	if errors.As(err, &pe) {
		reply, _ := convert.AppendMessage(nil, pe.Reply(raw))
		fmt.Printf("reply % x\n", reply)
		return
	}
	fmt.Println(m.Connect.Dst, m.Connect.Dst.Addr().Is4(), stream.Len())

	// Converter: refuse the client.
	reply, _ := convert.AppendMessage(nil, &convert.Message{Error: &convert.ErrorTLV{Code: convert.NotAuthorized}})
	resp, _ := convert.ReadMessage(bytes.NewReader(reply))
	fmt.Println(resp.Error.Code)
	// Output:
	// 01 08 00 00 0a 05 01 bb 00 00 00 00 00 00 00 00 00 00 ff ff c0 00 02 01 16 02 00 00 de ad be ef
	// 192.0.2.1:443 true 5
	// Not Authorized
}
