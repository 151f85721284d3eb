package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"halfway/strictyaml"
)

// writeTestFile writes content to dir/name and returns its path.
func writeTestFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// testPSK writes a valid 32-byte key (with a trailing newline) and returns its path.
func testPSK(t *testing.T) string {
	t.Helper()
	return writeTestFile(t, t.TempDir(), "psk", "0123456789abcdef0123456789abcdef\n")
}

func TestConfigParseFull(t *testing.T) {
	dir := t.TempDir()
	psk := writeTestFile(t, dir, "psk", "0123456789abcdef0123456789abcdef\n")
	users := writeTestFile(t, dir, "users", "# clients\nalice:secret\n\nbob:hunter2\n")
	yml := fmt.Sprintf(`
admin:
  listen: "127.0.0.1:9999"
log:
  format: json
  level: debug
auth:
  psk_file: %q
  window: 45s
limits:
  max_flows: 100
  max_flows_per_client: 10
  max_pending: 20
  connect_timeout: 3s
  handshake_timeout: 7s
legs:
  client: {idle_timeout: 1m, keepalive: 10s, user_timeout: 20s, rto_min: 20ms}
  server: {idle_timeout: 2m, keepalive: 11s, user_timeout: 21s}
  relay:  {idle_timeout: 3m, keepalive: 12s, user_timeout: 22s}
listeners:
  - name: socks
    listen: "0.0.0.0:1080"
    mode: explicit
    protocols: [socks5, http]
    allow_clients: ["10.0.0.0/8", "2001:db8::/32"]
    allow_destinations: ["10.0.0.0/8:80,443", "192.168.0.0/16", "2001:db8::/32"]
    users_file: %q
    proxy_protocol: true
  - name: hop
    listen: "[::]:7100"
    protocols: [convert]
    allow_clients: ["192.0.2.0/24"]
    allow_destinations: ["10.1.0.0/16:8000-8100"]
  - name: tp
    listen: "0.0.0.0:7200"
    mode: tproxy
    allow_clients: ["10.0.0.0/8"]
    allow_destinations: ["0.0.0.0/0:443"]
routes:
  - listener: socks
    dst: ["10.1.0.0/16", "2001:db8:1::/48"]
    ports: "80,443,8000-8100"
    via: ["10.0.0.2:7100", "[2001:db8::2]:7100"]
  - dst: ["0.0.0.0/0"]
`, psk, users)
	c, err := ParseConfig([]byte(yml))
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	d := func(s string) Duration {
		v, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		return Duration(v)
	}
	want := &Config{
		Admin:  AdminConfig{Listen: "127.0.0.1:9999"},
		Log:    LogConfig{Format: "json", Level: "debug"},
		Auth:   AuthConfig{PSKFile: psk, Window: d("45s")},
		Memory: MemoryConfig{ReleaseAfter: Duration(defaultReleaseAfter)},
		Limits: Limits{MaxFlows: 100, MaxFlowsPerClient: 10, MaxPending: 20, MaxHandshakes: defaultMaxHandshakes,
			ConnectTimeout: d("3s"), HandshakeTimeout: d("7s"), PooledWait: Duration(defaultPooledWait), MaxEarly: defaultMaxEarly, MaxEarlyPerClient: defaultMaxEarlyClient},
		Legs: LegsConfig{
			Client: LegConfig{IdleTimeout: OffDuration(d("1m")), Keepalive: OffDuration(d("10s")), UserTimeout: d("20s"), RTOMin: d("20ms")},
			Server: LegConfig{IdleTimeout: OffDuration(d("2m")), Keepalive: OffDuration(d("11s")), UserTimeout: d("21s")},
			Relay:  LegConfig{IdleTimeout: OffDuration(d("3m")), Keepalive: OffDuration(d("12s")), UserTimeout: d("22s")},
		},
		Listeners: []ListenerConfig{
			{Name: "socks", Listen: "0.0.0.0:1080", Mode: "explicit", Protocols: []string{"socks5", "http"},
				AllowClients:      []string{"10.0.0.0/8", "2001:db8::/32"},
				AllowDestinations: []string{"10.0.0.0/8:80,443", "192.168.0.0/16", "2001:db8::/32"},
				UsersFile:         users, ProxyProtocol: true},
			{Name: "hop", Listen: "[::]:7100", Mode: "explicit", Protocols: []string{"convert"},
				AllowClients: []string{"192.0.2.0/24"}, AllowDestinations: []string{"10.1.0.0/16:8000-8100"}},
			{Name: "tp", Listen: "0.0.0.0:7200", Mode: "tproxy",
				AllowClients: []string{"10.0.0.0/8"}, AllowDestinations: []string{"0.0.0.0/0:443"}},
		},
		Routes: []RouteConfig{
			{Listener: "socks", Dst: []string{"10.1.0.0/16", "2001:db8:1::/48"}, Ports: "80,443,8000-8100",
				Via: []string{"10.0.0.2:7100", "[2001:db8::2]:7100"}},
			{Dst: []string{"0.0.0.0/0"}},
		},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("ParseConfig:\n got %+v\nwant %+v", c, want)
	}
}

func TestConfigDefaults(t *testing.T) {
	psk := testPSK(t)
	yml := fmt.Sprintf(`
auth: {psk_file: %q}
listeners:
  - name: a
    listen: "127.0.0.1:1080"
    allow_clients: ["127.0.0.0/8"]
    allow_destinations: ["10.0.0.0/8"]
  - name: t
    listen: "0.0.0.0:7200"
    mode: redirect
`, psk)
	c, err := ParseConfig([]byte(yml))
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	legDefault := LegConfig{IdleTimeout: OffDuration(15 * time.Minute), Keepalive: OffDuration(30 * time.Second)}
	for _, tc := range []struct {
		field    string
		got, def any
	}{
		{"admin.listen", c.Admin.Listen, "127.0.0.1:9190"},
		{"log.format", c.Log.Format, "text"},
		{"log.level", c.Log.Level, "info"},
		{"auth.window", c.Auth.Window, Duration(30 * time.Second)},
		{"limits.max_flows", c.Limits.MaxFlows, 8000},
		{"limits.max_flows_per_client", c.Limits.MaxFlowsPerClient, 1000},
		{"limits.max_pending", c.Limits.MaxPending, 1024},
		{"limits.connect_timeout", c.Limits.ConnectTimeout, Duration(5 * time.Second)},
		{"limits.handshake_timeout", c.Limits.HandshakeTimeout, Duration(10 * time.Second)},
		{"legs.client", c.Legs.Client, legDefault},
		{"legs.server", c.Legs.Server, legDefault},
		{"legs.relay", c.Legs.Relay, legDefault},
		{"listeners[0].mode", c.Listeners[0].Mode, "explicit"},
		{"listeners[0].protocols", c.Listeners[0].Protocols, []string{"socks5", "http"}},
		{"listeners[1].mode", c.Listeners[1].Mode, "redirect"},
		{"listeners[1].protocols", c.Listeners[1].Protocols, []string(nil)},
		{"listeners[0].proxy_protocol", c.Listeners[0].ProxyProtocol, false},
		{"routes", c.Routes, []RouteConfig(nil)},
		{"detach_after", c.Detach(), time.Second},
	} {
		t.Run(tc.field, func(t *testing.T) {
			if !reflect.DeepEqual(tc.got, tc.def) {
				t.Errorf("%s = %#v, want default %#v", tc.field, tc.got, tc.def)
			}
		})
	}
	if got := c.Legs.Client.UserTimeout; got != 0 {
		t.Errorf("legs.client.user_timeout = %v, want 0 (kernel default)", got.D())
	}
}

// A field set explicitly is not overwritten by its default; "off" disables admin.
func TestConfigDefaultsDoNotOverride(t *testing.T) {
	yml := `
admin: {listen: "off"}
limits: {max_flows: 5}
detach_after: 0s
legs:
  client: {idle_timeout: off, keepalive: 0s}
  server: {idle_timeout: 0s, keepalive: off}
listeners:
  - {name: a, listen: "127.0.0.1:1080", protocols: [socks5], allow_clients: ["127.0.0.0/8"], allow_destinations: ["10.0.0.0/8"]}
`
	c, err := ParseConfig([]byte(yml))
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	if c.Admin.Listen != "off" || c.Limits.MaxFlows != 5 || !reflect.DeepEqual(c.Listeners[0].Protocols, []string{"socks5"}) || c.Detach() != 0 {
		t.Errorf("got admin %q max_flows %d protocols %v detach_after %v", c.Admin.Listen, c.Limits.MaxFlows, c.Listeners[0].Protocols, c.Detach())
	}
	// off (or 0s): no idle timeout, no keepalive; the relay leg keeps its defaults.
	for _, leg := range []LegConfig{c.Legs.Client, c.Legs.Server} {
		if leg.IdleTimeout != 0 || leg.Keepalive != 0 {
			t.Errorf("a leg with idle_timeout and keepalive off: %v and %v, want 0 (never, off)", leg.IdleTimeout.D(), leg.Keepalive.D())
		}
	}
	if c.Legs.Relay.IdleTimeout.D() != 15*time.Minute || c.Legs.Relay.Keepalive.D() != 30*time.Second {
		t.Errorf("legs.relay: %v and %v, want the defaults", c.Legs.Relay.IdleTimeout.D(), c.Legs.Relay.Keepalive.D())
	}
	if rt, err := newRuntime(c); err != nil || rt.tunables.ClientIdle != 0 || rt.tunables.ServerIdle != 0 {
		t.Errorf("tunables: %+v, %v; want the idle timeouts 0 (never)", rt.tunables, err)
	}
}

// TestConfigPeerAddressOnce: a peer's address that is not an IP address
// is said to be wrong once, not also as missing the port its pool needs.
func TestConfigPeerAddressOnce(t *testing.T) {
	_, err := ParseConfig([]byte(fmt.Sprintf("auth: {psk_file: %q}\n", testPSK(t)) + "listeners: [{name: s, listen: \"127.0.0.1:0\", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: [10.0.0.0/8]}]\npeers:\n  - {address: \"rs.example:7100\", pool: {}}\n"))
	if err == nil {
		t.Fatal("ParseConfig succeeded")
	}
	if n := strings.Count(err.Error(), "peers[0].address"); n != 1 {
		t.Errorf("%d errors name peers[0].address, want 1:\n%v", n, err)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	psk := writeTestFile(t, dir, "psk", "0123456789abcdef\n")
	shortPSK := writeTestFile(t, dir, "short", "0123456789abcde\n") // 15 bytes
	badUsers := writeTestFile(t, dir, "users", "# comment\nalice:pw\nnocolon\n")
	noUsers := writeTestFile(t, dir, "nousers", "# bob left\n")
	missing := filepath.Join(dir, "absent")

	// ln is a valid socks5-only explicit listener (no PSK needed).
	const ln = `{name: a, listen: "127.0.0.1:1080", protocols: [socks5], allow_clients: ["10.0.0.0/8"], allow_destinations: ["10.0.0.0/8"]}`
	withAuth := func(path string) string { return fmt.Sprintf("auth: {psk_file: %q}\n", path) }

	for _, tc := range []struct {
		name string
		yml  string
		want []string // each starts one error line (field path first); "~text": appears anywhere
	}{
		{"no listeners", "admin: {listen: \"127.0.0.1:1\"}\n", []string{"listeners: want at least one listener"}},
		{"unknown key in listener",
			"listeners:\n  - {name: a, colour: red, listen: \"127.0.0.1:1080\", protocols: [socks5], allow_clients: [\"10.0.0.0/8\"], allow_destinations: [\"10.0.0.0/8\"]}\n",
			[]string{"listeners[0].colour: unknown field"}},
		{"unknown top-level key", "colour: red\nlisteners: [" + ln + "]\n", []string{"colour: unknown field"}},
		{"unknown key in limits", "limits: {max_flow: 3}\nlisteners: [" + ln + "]\n", []string{"limits.max_flow: unknown field"}},
		{"bad duration", "limits: {connect_timeout: 5 sec}\nlisteners: [" + ln + "]\n", []string{`limits.connect_timeout: "5 sec"`}},
		{"negative duration", "limits: {handshake_timeout: -1s}\nlisteners: [" + ln + "]\n", []string{`limits.handshake_timeout: "-1s"`}},
		{"bad leg duration", "legs: {server: {idle_timeout: forever}}\nlisteners: [" + ln + "]\n", []string{"legs.server.idle_timeout"}},
		{"timeouts too short", "limits: {connect_timeout: 1ns, handshake_timeout: 1ms, pooled_wait: 5ms}\nlisteners: [" + ln + "]\n", []string{"limits.connect_timeout: 1ns: want at least 10ms", "limits.handshake_timeout: 1ms", "limits.pooled_wait: 5ms"}},
		{"zeros are not the defaults", "limits: {max_flows: 0, max_early: 0, connect_timeout: 0s}\nauth: {window: 0s}\nmemory: {release_after: 0s}\nlisteners: [" + ln + "]\n",
			[]string{"limits.max_flows: 0: want a positive number (leave it out for the default)", "limits.max_early: 0", "limits.connect_timeout: 0s: want at least 10ms", "auth.window: 0s", "memory.release_after: 0s: want 1s to 24h"}},
		{"user_timeout past an int of ms", "legs: {server: {user_timeout: 600h}}\nlisteners: [" + ln + "]\n", []string{"legs.server.user_timeout: 600h0m0s: want at most 596h31m23.647s"}},
		{"keepalive past the kernel's", "legs: {client: {keepalive: 10h}, relay: {keepalive: 32768s}, server: {keepalive: 32767s}}\nlisteners: [" + ln + "]\n",
			[]string{"legs.client.keepalive: 10h0m0s: want at most 9h6m7s", "legs.relay.keepalive: 9h6m8s: want at most 9h6m7s"}},
		{"off where no off", "limits: {connect_timeout: off}\nlisteners: [" + ln + "]\n", []string{`limits.connect_timeout: "off"`}},
		{"capture dst of the other family", "listeners:\n  - {name: web, listen: \"0.0.0.0:7000\", mode: redirect, capture: {dst: [\"2001:db8::/32\"], ports: \"80\"}}\n", []string{`listeners[0].capture.dst[0]: "2001:db8::/32": not of the listener's address family`}},
		{"capture mark and table 0", "listeners:\n  - {name: web, listen: \"0.0.0.0:7000\", mode: tproxy, capture: {ports: \"80\", mark: 0, table: 0}}\n",
			[]string{"listeners[0].capture.mark: 0 is the mark of every unmarked packet: want another (default 1)", "listeners[0].capture.table: 0 is no routing table: want another (default 100)"}},
		{"capture tables alike", "listeners:\n  - {name: web-a, listen: \"0.0.0.0:7000\", mode: tproxy, capture: {ports: \"80\"}}\n  - {name: web.a, listen: \"0.0.0.0:7001\", mode: tproxy, capture: {ports: \"81\"}}\n", []string{`listeners[1].name: "web.a": its capture table halfway_web_a would be listener "web-a"'s too`}},
		{"listeners on one address",
			"listeners:\n  - " + ln + "\n  - {name: b, listen: \"127.0.0.1:1080\", protocols: [socks5], allow_clients: [\"10.0.0.0/8\"], allow_destinations: [\"10.0.0.0/8\"]}\n",
			[]string{`listeners[1].listen: "127.0.0.1:1080": listener "a" listens there too`}},
		{"listener inside a wildcard one",
			"listeners:\n  - " + ln + "\n  - {name: b, listen: \"0.0.0.0:1080\", protocols: [socks5], allow_clients: [\"10.0.0.0/8\"], allow_destinations: [\"10.0.0.0/8\"]}\n",
			[]string{`listeners[1].listen: "0.0.0.0:1080": listener "a" listens there too`}},
		{"IPv6 listener inside a wildcard one",
			"listeners:\n  - {name: b, listen: \"[::]:1080\", mode: forward, forward_to: \"10.0.0.1:80\"}\n  - {name: c, listen: \"[::1]:1080\", mode: forward, forward_to: \"10.0.0.1:80\"}\n",
			[]string{`listeners[1].listen: "[::1]:1080": listener "b" listens there too`}},
		{"admin on a listener's address",
			"admin: {listen: \"127.0.0.1:1080\"}\nlisteners: [" + ln + "]\n",
			[]string{`admin.listen: "127.0.0.1:1080": listener "a" listens there too`}},
		{"more flows than the sockmap holds", "data_path: sockmap\nlimits: {max_flows: 2000000}\nlisteners: [" + ln + "]\n",
			[]string{"limits.max_flows: 2000000: data_path sockmap takes at most 1048576"}},
		{"bad window", "auth: {window: 10}\nlisteners: [" + ln + "]\n", []string{"auth.window"}},
		{"negative limit", "limits: {max_pending: -1}\nlisteners: [" + ln + "]\n", []string{"limits.max_pending: -1"}},
		{"non-integer limit", "limits: {max_flows: lots}\nlisteners: [" + ln + "]\n", []string{"limits.max_flows"}},
		{"bad admin", "admin: {listen: localhost}\nlisteners: [" + ln + "]\n", []string{`admin.listen: "localhost"`}},
		{"bad log format", "log: {format: xml}\nlisteners: [" + ln + "]\n", []string{`log.format: "xml"`}},
		{"bad log level", "log: {level: loud}\nlisteners: [" + ln + "]\n", []string{`log.level: "loud"`}},
		{"no allow_clients",
			"listeners:\n  - {name: a, listen: \"127.0.0.1:1080\", protocols: [socks5], allow_destinations: [\"10.0.0.0/8\"]}\n",
			[]string{"listeners[0].allow_clients: "}},
		{"no allow_destinations",
			"listeners:\n  - {name: a, listen: \"127.0.0.1:1080\", protocols: [socks5], allow_clients: [\"10.0.0.0/8\"]}\n",
			[]string{"listeners[0].allow_destinations: "}},
		{"bad allow_clients entry",
			"listeners:\n  - {name: a, listen: \"127.0.0.1:1080\", protocols: [socks5], allow_clients: [\"10.0.0.0/8\", \"10.0.0.1\"], allow_destinations: [\"10.0.0.0/8\"]}\n",
			[]string{`listeners[0].allow_clients[1]: "10.0.0.1"`}},
		{"bad allow_destinations entry",
			"listeners:\n  - {name: a, listen: \"127.0.0.1:1080\", protocols: [socks5], allow_clients: [\"10.0.0.0/8\"], allow_destinations: [\"300.0.0.0/8\"]}\n",
			[]string{`listeners[0].allow_destinations[0]: "300.0.0.0/8"`}},
		{"bad allow_destinations ports",
			"listeners:\n  - {name: a, listen: \"127.0.0.1:1080\", protocols: [socks5], allow_clients: [\"10.0.0.0/8\"], allow_destinations: [\"10.0.0.0/8:0\"]}\n",
			[]string{`listeners[0].allow_destinations[0]: "10.0.0.0/8:0"`}},
		{"bad listen second listener",
			"listeners:\n  - " + ln + "\n  - {name: b, listen: \"1080\", protocols: [socks5], allow_clients: [\"10.0.0.0/8\"], allow_destinations: [\"10.0.0.0/8\"]}\n",
			[]string{`listeners[1].listen: "1080"`}},
		{"missing listen", "listeners:\n  - {name: a, protocols: [socks5], allow_clients: [\"10.0.0.0/8\"], allow_destinations: [\"10.0.0.0/8\"]}\n",
			[]string{`listeners[0].listen: ""`}},
		{"missing name", "listeners:\n  - {listen: \"127.0.0.1:1080\", protocols: [socks5], allow_clients: [\"10.0.0.0/8\"], allow_destinations: [\"10.0.0.0/8\"]}\n",
			[]string{"listeners[0].name: want a name"}},
		{"duplicate name",
			"listeners:\n  - " + ln + "\n  - {name: a, listen: \"127.0.0.1:1081\", protocols: [socks5], allow_clients: [\"10.0.0.0/8\"], allow_destinations: [\"10.0.0.0/8\"]}\n",
			[]string{`listeners[1].name: "a": duplicate listener`}},
		{"bad mode", "listeners:\n  - {name: a, listen: \"127.0.0.1:1080\", mode: magic}\n", []string{`listeners[0].mode: "magic"`}},
		{"bad protocol",
			"listeners:\n  - {name: a, listen: \"127.0.0.1:1080\", protocols: [socks5, socks4], allow_clients: [\"10.0.0.0/8\"], allow_destinations: [\"10.0.0.0/8\"]}\n",
			[]string{`listeners[0].protocols[1]: "socks4"`}},
		{"transparent with protocols",
			"listeners:\n  - {name: t, listen: \"0.0.0.0:7200\", mode: tproxy, protocols: [socks5]}\n",
			[]string{"listeners[0].protocols: a transparent listener speaks no protocol"}},
		{"redirect with protocols",
			"listeners:\n  - " + ln + "\n  - {name: t, listen: \"0.0.0.0:7200\", mode: redirect, protocols: [http]}\n",
			[]string{"listeners[1].protocols: a transparent listener"}},
		{"users file malformed line",
			fmt.Sprintf("listeners:\n  - {name: a, listen: \"127.0.0.1:1080\", protocols: [socks5], allow_clients: [\"10.0.0.0/8\"], allow_destinations: [\"10.0.0.0/8\"], users_file: %q}\n", badUsers),
			[]string{"listeners[0].users_file: " + badUsers + ":3: want user:password"}},
		{"users file without users",
			fmt.Sprintf("listeners:\n  - {name: a, listen: \"127.0.0.1:1080\", protocols: [socks5, http], allow_clients: [\"10.0.0.0/8\"], allow_destinations: [\"10.0.0.0/8\"], users_file: %q}\n", noUsers),
			[]string{"listeners[0].users_file: " + noUsers + ": no user:password line"}},
		{"users file missing",
			fmt.Sprintf("listeners:\n  - {name: a, listen: \"127.0.0.1:1080\", protocols: [socks5], allow_clients: [\"10.0.0.0/8\"], allow_destinations: [\"10.0.0.0/8\"], users_file: %q}\n", missing),
			[]string{"listeners[0].users_file: ", "~" + missing}},
		{"psk needed by convert listener",
			"listeners:\n  - {name: h, listen: \"0.0.0.0:7100\", protocols: [convert], allow_clients: [\"10.0.0.0/8\"], allow_destinations: [\"10.0.0.0/8\"]}\n",
			[]string{"auth.psk_file: relay hops"}},
		{"psk needed by convert",
			"listeners:\n  - {name: h, listen: \"0.0.0.0:7100\", protocols: [convert], allow_clients: [\"10.0.0.0/8\"], allow_destinations: [\"10.0.0.0/8\"]}\n",
			[]string{"auth.psk_file: relay hops"}},
		{"psk needed by route via",
			"listeners: [" + ln + "]\nroutes:\n  - {via: [\"10.0.0.2:7100\"]}\n",
			[]string{"auth.psk_file: relay hops"}},
		{"psk too short", withAuth(shortPSK) + "listeners: [" + ln + "]\nroutes:\n  - {via: [\"10.0.0.2:7100\"]}\n",
			[]string{"auth.psk_file: " + shortPSK + ": the key has 15 bytes, want at least 16"}},
		{"psk file missing", withAuth(missing) + "listeners: [" + ln + "]\nroutes:\n  - {via: [\"10.0.0.2:7100\"]}\n",
			[]string{"auth.psk_file: ", "~" + missing}},
		{"route bad via second", withAuth(psk) + "listeners: [" + ln + "]\nroutes:\n  - {via: [\"10.0.0.2:7100\", \"10.0.0.3\"]}\n",
			[]string{`routes[0].via[1]: "10.0.0.3"`}},
		{"route too many via", withAuth(psk) + "listeners: [" + ln + "]\nroutes:\n  - {via: [\"10.0.0.2:1\", \"10.0.0.3:1\", \"10.0.0.4:1\", \"10.0.0.5:1\"]}\n",
			[]string{"routes[0].via: 4 relays: at most 3"}},
		{"route unknown listener", "listeners: [" + ln + "]\nroutes:\n  - {listener: nope}\n",
			[]string{`routes[0].listener: "nope": no such listener`}},
		{"route bad dst", "listeners: [" + ln + "]\nroutes:\n  - {}\n  - {dst: [\"10.0.0.0/8\", \"10.0.0.0\"]}\n",
			[]string{`routes[1].dst[1]: "10.0.0.0"`}},
		{"route port zero", "listeners: [" + ln + "]\nroutes:\n  - {ports: \"0\"}\n", []string{`routes[0].ports: "0"`}},
		{"route port range reversed", "listeners: [" + ln + "]\nroutes:\n  - {ports: \"90-80\"}\n", []string{`routes[0].ports: "90-80"`}},
		{"route port not a number", "listeners: [" + ln + "]\nroutes:\n  - {ports: \"x\"}\n", []string{`routes[0].ports: "x"`}},
		{"route port too big", "listeners: [" + ln + "]\nroutes:\n  - {ports: \"65536\"}\n", []string{`routes[0].ports: "65536"`}},
		{"several problems at once",
			"log: {level: loud}\nlisteners:\n  - {name: a, listen: \"x\", mode: explicit, protocols: [socks5]}\nroutes:\n  - {listener: b, via: [\"y\"]}\n",
			[]string{"log.level", "listeners[0].listen", "listeners[0].allow_clients", "listeners[0].allow_destinations",
				"routes[0].listener", "routes[0].via[0]", "auth.psk_file"}},
		{"peer without pool or turbo", withAuth(psk) + "listeners: [" + ln + "]\npeers:\n  - {address: \"10.0.0.2:7100\"}\n",
			[]string{"peers[0]: a peer needs a pool, turbo or both"}},
		{"peer bad address", "listeners: [" + ln + "]\npeers:\n  - {address: relay2, turbo: {}}\n",
			[]string{`peers[0].address: "relay2"`}},
		{"empty pool and turbo", withAuth(psk) + "listeners: [" + ln + "]\npeers:\n  - address: \"10.0.0.2:7100\"\n    pool:\n    turbo: ~\n",
			[]string{`peers[0].pool: "": empty: write {} for the defaults, or leave the key out (line 5)`, `peers[0].turbo: "~": empty`}},
		{"empty capture", "listeners:\n  - {name: t, listen: \"0.0.0.0:7000\", mode: tproxy, capture: }\n",
			[]string{`listeners[0].capture: "": empty`}},
		{"empty capture by an alias", "listeners:\n  - {name: t, listen: \"0.0.0.0:7000\", mode: tproxy, users_file: &none ~, capture: *none}\n",
			[]string{`listeners[0].capture: "~": empty`}},
		{"pool without port", withAuth(psk) + "listeners: [" + ln + "]\npeers:\n  - {address: 10.0.0.2, pool: {}}\n",
			[]string{`peers[0].address: "10.0.0.2": a pool needs the peer's port`}},
		{"pool needs psk", "listeners: [" + ln + "]\npeers:\n  - {address: \"10.0.0.2:7100\", pool: {}}\n",
			[]string{"auth.psk_file: relay hops"}},
		{"pool watermarks reversed", withAuth(psk) + "listeners: [" + ln + "]\npeers:\n  - {address: \"10.0.0.2:7100\", pool: {low: 8, high: 4}}\n",
			[]string{"peers[0].pool: low 8, high 4"}},
		{"pool too big", withAuth(psk) + "listeners: [" + ln + "]\npeers:\n  - {address: \"10.0.0.2:7100\", pool: {low: 1, high: 5000}}\n",
			[]string{"peers[0].pool: low 1, high 5000"}},
		{"pool unknown key", withAuth(psk) + "listeners: [" + ln + "]\npeers:\n  - {address: \"10.0.0.2:7100\", pool: {size: 4}}\n",
			[]string{"peers[0].pool.size: unknown field"}},
		{"duplicate peer", "listeners: [" + ln + "]\npeers:\n  - {address: 10.0.0.2, turbo: {}}\n  - {address: \"10.0.0.2:7100\", turbo: {}}\n",
			[]string{`peers[1].address: "10.0.0.2:7100": duplicate peer`}},
		{"turbo window too big", "listeners: [" + ln + "]\npeers:\n  - {address: 10.0.0.2, turbo: {initcwnd: 100000}}\n",
			[]string{"peers[0].turbo: initcwnd 100000"}},
		{"unknown congestion control", "legs: {relay: {congestion: warp}}\nlisteners: [" + ln + "]\n",
			[]string{`legs.relay.congestion: "warp": not available here`}},
		{"bad buffer size", "legs: {relay: {send_buffer: 16 megs}}\nlisteners: [" + ln + "]\n",
			[]string{`legs.relay.send_buffer: "16 megs"`}},
		{"early SYN on explicit", "listeners:\n  - {name: a, listen: \"127.0.0.1:1080\", protocols: [socks5], allow_clients: [\"10.0.0.0/8\"], allow_destinations: [\"10.0.0.0/8\"], early_syn: true}\n",
			[]string{"listeners[0].early_syn: needs a transparent listener"}},
		{"early SYN without capture", "listeners:\n  - {name: t, listen: \"0.0.0.0:7200\", mode: tproxy, early_syn: true}\n",
			[]string{"listeners[0].early_syn: needs capture"}},
		{"negative max_early", "limits: {max_early: -1}\nlisteners: [" + ln + "]\n", []string{"limits.max_early: -1"}},
		{"negative max_early_per_client", "limits: {max_early_per_client: -1}\nlisteners: [" + ln + "]\n", []string{"limits.max_early_per_client: -1"}},
		{"forward without destination", "listeners:\n  - {name: f, listen: \"0.0.0.0:7300\", mode: forward}\n",
			[]string{`listeners[0].forward_to: "": want the destination as ip:port`}},
		{"forward to itself", "listeners:\n  - {name: f, listen: \"0.0.0.0:7300\", mode: forward, forward_to: \"127.0.0.1:7300\"}\n",
			[]string{`listeners[0].forward_to: "127.0.0.1:7300": the listener itself`}},
		{"forward to itself, mapped", "listeners:\n  - {name: f, listen: \"127.0.0.1:7300\", mode: forward, forward_to: \"[::ffff:127.0.0.1]:7300\"}\n",
			[]string{`listeners[0].forward_to: "[::ffff:127.0.0.1]:7300": the listener itself`}},
		{"forward with protocols and destinations", "listeners:\n  - {name: f, listen: \"0.0.0.0:7300\", mode: forward, forward_to: \"10.0.0.1:80\", protocols: [socks5], allow_destinations: [\"10.0.0.0/8\"]}\n",
			[]string{"listeners[0].protocols: not for a forward listener", "listeners[0].allow_destinations: not for a forward listener"}},
		{"bad data path", "data_path: ebpf\nlisteners: [" + ln + "]\n", []string{`data_path: "ebpf": want splice, sockmap or copy`}},
		{"rto_min out of range", "legs: {client: {rto_min: 500us}, server: {rto_min: 1s}}\nlisteners: [" + ln + "]\n",
			[]string{"legs.client.rto_min: 500µs: want 1ms to 200ms", "legs.server.rto_min: 1s: want 1ms to 200ms"}},
		// MPTCP sockets refuse these options (Linux 6.18): Go would dial plain TCP instead.
		{"MPTCP route with user_timeout", "legs: {server: {user_timeout: 30s, rto_min: 20ms}}\nroutes: [{mptcp: true}]\nlisteners: [" + ln + "]\n",
			[]string{"legs.server: routes[0] dials Multipath TCP, whose sockets refuse TCP_USER_TIMEOUT: protocol not available, TCP_RTO_MIN_US: protocol not available here"}},
		{"MPTCP pool with pacing", withAuth(psk) + "legs: {relay: {pacing: true}}\npeers: [{address: \"10.0.0.2:7100\", pool: {low: 1}, mptcp: true}]\nlisteners: [" + ln + "]\n",
			[]string{"legs.relay: peers[0] pools over Multipath TCP, whose sockets refuse SO_MAX_PACING_RATE: operation not supported here"}},
		{"park_after too long", "park_after: 2m\nlisteners: [" + ln + "]\n", []string{"park_after: 2m0s: want 0 to 1m"}},
		{"detach_after negative", "detach_after: -1s\nlisteners: [" + ln + "]\n", []string{`detach_after: "-1s": want a duration like 30s`}},
		{"detach_after too long", "detach_after: 2h\nlisteners: [" + ln + "]\n", []string{"detach_after: 2h0m0s: want 0 (off) to 1h"}},
		{"release_after too short", "memory: {release_after: 100ms}\nlisteners: [" + ln + "]\n", []string{"memory.release_after: 100ms: want 1s to 24h"}},
		{"forward_to elsewhere", "listeners:\n  - {name: t, listen: \"0.0.0.0:7200\", mode: tproxy, forward_to: \"10.0.0.1:80\"}\n",
			[]string{"listeners[0].forward_to: only for mode forward"}},
		{"not YAML", "listeners: [\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.yml))
			if err == nil {
				t.Fatalf("ParseConfig succeeded: %+v", c)
			}
			if c != nil {
				t.Errorf("ParseConfig returned a config with its error")
			}
			var errs strictyaml.Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error %T %v: want a non-empty strictyaml.Errors", err, err)
			}
			// Each wanted text starts an error line: field paths come first.
			lines := strings.Split(err.Error(), "\n")
			for _, w := range tc.want {
				found := false
				if rest, ok := strings.CutPrefix(w, "~"); ok {
					found = strings.Contains(err.Error(), rest)
				}
				for _, l := range lines {
					found = found || strings.HasPrefix(l, w)
				}
				if !found {
					t.Errorf("no error line starting %q in:\n%v", w, err)
				}
			}
		})
	}
}

// TestConfigListenersApart checks that listeners on the same port but
// different addresses, or on port 0, are not taken for overlapping.
func TestConfigListenersApart(t *testing.T) {
	for _, addrs := range [][]string{
		{"127.0.0.1:1080", "127.0.0.2:1080", "[::1]:1080"},
		{"127.0.0.1:1080", "127.0.0.1:1081"},
		// IPv4 addresses listen on IPv4 sockets, IPv6 ones on IPv6-only ones.
		{"[::]:1080", "127.0.0.1:1080"},
		{"0.0.0.0:1080", "[::1]:1080"},
		{"127.0.0.1:0", "127.0.0.1:0", "0.0.0.0:0"},
	} {
		var b strings.Builder
		b.WriteString("admin: {listen: \"127.0.0.1:0\"}\nlisteners:\n")
		for i, a := range addrs {
			fmt.Fprintf(&b, "  - {name: l%d, listen: %q, mode: forward, forward_to: \"10.0.0.1:80\"}\n", i, a)
		}
		if _, err := ParseConfig([]byte(b.String())); err != nil {
			t.Errorf("%v: %v", addrs, err)
		}
	}
}

// TestConfigErrorLines checks that the errors of validation, like those of
// decoding, name the line of what they are about.
func TestConfigErrorLines(t *testing.T) {
	yml := `admin: {listen: "127.0.0.1:9190"}
limits:
  max_flows: -5
listeners:
  - name: a
    listen: "127.0.0.1:1080"
    protocols: [socks5, gopher]
    allow_clients: [10.0.0.0/8]
  - listen: "127.0.0.1:1081"
    mode: forward
    forward_to: "10.0.0.1:80"
`
	want := []string{
		`limits.max_flows: -5: want a positive number (leave it out for the default) (line 3)`,
		`listeners[0].protocols[1]: "gopher": want socks5, http or convert (line 7)`,
		`listeners[0].allow_destinations: an explicit listener reaches nothing without an allow list: name the destination CIDRs (line 5)`,
		`listeners[1].name: want a name (used by routes, metrics and logs) (line 9)`,
	}
	_, err := ParseConfig([]byte(yml))
	if err == nil {
		t.Fatal("ParseConfig succeeded")
	}
	if got := strings.Split(err.Error(), "\n"); !reflect.DeepEqual(got, want) {
		t.Errorf("errors:\n got  %q\n want %q", got, want)
	}
}

func TestConfigLoadUsers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content string
		want    map[string]string
		badLine int // 0: valid; -1: no users
	}{
		{"simple", "alice:secret\nbob:hunter2\n", map[string]string{"alice": "secret", "bob": "hunter2"}, 0},
		{"comments and blanks", "# users\n\n  # indented comment\nalice:secret\n\n", map[string]string{"alice": "secret"}, 0},
		{"crlf and spaces", "  alice:secret  \r\nbob:pw\r\n", map[string]string{"alice": "secret", "bob": "pw"}, 0},
		{"colon in password", "alice:a:b:c\n", map[string]string{"alice": "a:b:c"}, 0},
		{"no trailing newline", "alice:pw", map[string]string{"alice": "pw"}, 0},
		{"empty file", "", nil, -1},
		{"only comments", "# nobody\n", nil, -1},
		{"no colon", "alice:pw\n# c\nbob\n", nil, 3},
		{"empty user", ":pw\n", nil, 1},
		{"empty password", "\nalice:\n", nil, 2},
		{"user too long", strings.Repeat("u", 256) + ":pw\n", nil, 1},
		{"password too long", "u:" + strings.Repeat("p", 256) + "\n", nil, 1},
		{"longest user and password", strings.Repeat("u", 255) + ":" + strings.Repeat("p", 255) + "\n",
			map[string]string{strings.Repeat("u", 255): strings.Repeat("p", 255)}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeTestFile(t, t.TempDir(), "users", tc.content)
			got, err := loadUsers(path)
			if tc.badLine != 0 {
				want := fmt.Sprintf("%s:%d: want user:password", path, tc.badLine)
				if tc.badLine < 0 {
					want = path + ": no user:password line (leave users_file out to ask no login)"
				}
				if err == nil || err.Error() != want {
					t.Fatalf("loadUsers = %v, %v; want error %q", got, err, want)
				}
				return
			}
			if err != nil {
				t.Fatalf("loadUsers: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("loadUsers = %v, want %v", got, tc.want)
			}
		})
	}
	if _, err := loadUsers(filepath.Join(t.TempDir(), "absent")); err == nil {
		t.Error("loadUsers of a missing file succeeded")
	}
}

func TestConfigLoadPSK(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content string
		want    string // "" for an error
	}{
		{"16 bytes", "0123456789abcdef", "0123456789abcdef"},
		{"16 bytes and newline", "0123456789abcdef\n", "0123456789abcdef"},
		{"16 bytes and crlf", "0123456789abcdef\r\n", "0123456789abcdef"},
		{"long", strings.Repeat("k", 64) + "\n", strings.Repeat("k", 64)},
		{"15 bytes", "0123456789abcde", ""},
		{"15 bytes and newlines", "0123456789abcde\n\n", ""},
		{"empty", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeTestFile(t, t.TempDir(), "psk", tc.content)
			got, err := loadPSK(path)
			if tc.want == "" {
				if err == nil || !strings.Contains(err.Error(), "want at least 16") || !strings.Contains(err.Error(), path) {
					t.Fatalf("loadPSK = %q, %v; want a too-short error naming the file", got, err)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Fatalf("loadPSK = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	if _, err := loadPSK(filepath.Join(t.TempDir(), "absent")); err == nil {
		t.Error("loadPSK of a missing file succeeded")
	}
}

func TestConfigLoadConfig(t *testing.T) {
	dir := t.TempDir()
	good := writeTestFile(t, dir, "good.yaml", `listeners: [{name: a, listen: "127.0.0.1:1080", protocols: [http], allow_clients: ["10.0.0.0/8"], allow_destinations: ["10.0.0.0/8"]}]`)
	if _, err := LoadConfig(good); err != nil {
		t.Errorf("LoadConfig(good): %v", err)
	}
	bad := writeTestFile(t, dir, "bad.yaml", "listeners: []\n")
	_, err := LoadConfig(bad)
	if err == nil || !strings.HasPrefix(err.Error(), bad+":\n") || !strings.Contains(err.Error(), "listeners: want at least one") {
		t.Errorf("LoadConfig(bad) = %v; want the file name then the field errors", err)
	}
	if _, err := LoadConfig(filepath.Join(dir, "absent")); err == nil {
		t.Error("LoadConfig of a missing file succeeded")
	}
}

// Peers take their defaults: pool watermarks 4/8, max idle 2m, turbo
// windows 100 and the receive window after the congestion window.
func TestConfigPeerDefaults(t *testing.T) {
	psk := writeTestFile(t, t.TempDir(), "psk", "0123456789abcdef\n")
	c, err := ParseConfig([]byte(fmt.Sprintf(`
auth: {psk_file: %q}
legs: {relay: {congestion: cubic, send_buffer: 32MiB, receive_buffer: 1048576}}
listeners:
  - {name: a, listen: "127.0.0.1:1080", protocols: [socks5], allow_clients: ["10.0.0.0/8"], allow_destinations: ["10.0.0.0/8"]}
peers:
  - {address: "10.0.0.2:7100", pool: {}, turbo: {initcwnd: 400}}
  - {address: "[2001:db8::2]:7100", pool: {low: 2, max_idle: 30s}}
  - {address: 10.0.0.3, turbo: {}}
  - {address: "10.0.0.4:7100", pool: {low: 0, high: 2}}
`, psk)))
	if err != nil {
		t.Fatal(err)
	}
	want := []PeerConfig{
		{Address: "10.0.0.2:7100", Pool: &PoolConfig{Low: 4, High: 8, MaxIdle: Duration(2 * time.Minute)}, Turbo: &TurboConfig{InitCwnd: 400, InitRwnd: 400}},
		{Address: "[2001:db8::2]:7100", Pool: &PoolConfig{Low: 2, High: 4, MaxIdle: Duration(30 * time.Second)}},
		{Address: "10.0.0.3", Turbo: &TurboConfig{InitCwnd: 100, InitRwnd: 100}},
		// low 0 as written, not the default: a pool that opens nothing.
		{Address: "10.0.0.4:7100", Pool: &PoolConfig{Low: 0, High: 2, MaxIdle: Duration(2 * time.Minute)}},
	}
	if !reflect.DeepEqual(c.Peers, want) {
		t.Errorf("peers:\n got %+v\nwant %+v", c.Peers, want)
	}
	if r := c.Legs.Relay; r.Congestion != "cubic" || r.SendBuffer != 32<<20 || r.ReceiveBuffer != 1<<20 {
		t.Errorf("legs.relay = %+v", r)
	}
}

func TestSizeUnmarshal(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Size
		ok   bool
	}{
		{"0", 0, true}, {"4096", 4096, true}, {"512KiB", 512 << 10, true}, {"16MiB", 16 << 20, true},
		{"1GiB", 1 << 30, true}, {"2MB", 2e6, true}, {"100B", 100, true}, {"2GiB", 2 << 30, true},
		{"3GiB", 0, false}, {"-1", 0, false}, {"1.5MiB", 0, false}, {"MiB", 0, false}, {"16 megs", 0, false}, {"", 0, false},
	} {
		var z Size
		err := z.UnmarshalText([]byte(tc.in))
		if (err == nil) != tc.ok || tc.ok && z != tc.want {
			t.Errorf("%q: got %d, %v; want %d ok=%v", tc.in, z, err, tc.want, tc.ok)
		}
	}
}

func TestConfigDurationUnmarshal(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"30s", 30 * time.Second, true},
		{"10m", 10 * time.Minute, true},
		{"1h30m", 90 * time.Minute, true},
		{"0s", 0, true},
		{"-1s", 0, false},
		{"30", 0, false},
		{"", 0, false},
		{"5 sec", 0, false},
	} {
		var d Duration
		err := d.UnmarshalText([]byte(tc.in))
		if (err == nil) != tc.ok || (tc.ok && d.D() != tc.want) {
			t.Errorf("UnmarshalText(%q) = %v, %v; want %v ok=%v", tc.in, d.D(), err, tc.want, tc.ok)
		}
	}
}

func TestParsePorts(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want portSet // nil: error
	}{
		{"80", portSet{{80, 80}}},
		{"80,443", portSet{{80, 80}, {443, 443}}},
		{"8000-8100", portSet{{8000, 8100}}},
		{"80, 443 ,8000-8100", portSet{{80, 80}, {443, 443}, {8000, 8100}}},
		{"1", portSet{{1, 1}}},
		{"65535", portSet{{65535, 65535}}},
		{"1-65535", portSet{{1, 65535}}},
		{"80-80", portSet{{80, 80}}},
		{"0", nil},
		{"0-80", nil},
		{"90-80", nil},
		{"x", nil},
		{"", nil},
		{"80,", nil},
		{",80", nil},
		{"80,,443", nil},
		{"80-", nil},
		{"-80", nil},
		{"1-2-3", nil},
		{"65536", nil},
		{"80-65536", nil},
		{"+80", nil},
		{"-1", nil},
		{"８０", nil},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parsePorts(tc.in)
			if tc.want == nil {
				if err == nil {
					t.Fatalf("parsePorts(%q) = %v; want an error", tc.in, got)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("parsePorts(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestParsePortsHas(t *testing.T) {
	ps := portSet{{80, 80}, {8000, 8100}}
	for _, tc := range []struct {
		p    uint16
		want bool
	}{{80, true}, {79, false}, {81, false}, {8000, true}, {8050, true}, {8100, true}, {7999, false}, {8101, false}, {0, false}} {
		if got := ps.has(tc.p); got != tc.want {
			t.Errorf("has(%d) = %v, want %v", tc.p, got, tc.want)
		}
	}
	var all portSet
	for _, p := range []uint16{0, 1, 80, 65535} {
		if !all.has(p) {
			t.Errorf("nil portSet.has(%d) = false, want true", p)
		}
	}
}

func TestParseDestRule(t *testing.T) {
	for _, tc := range []struct {
		in     string
		prefix string // "" for an error
		ports  portSet
	}{
		{"10.0.0.0/8", "10.0.0.0/8", nil},
		{"10.0.0.0/8:80,443", "10.0.0.0/8", portSet{{80, 80}, {443, 443}}},
		{"10.1.0.0/16:8000-8100", "10.1.0.0/16", portSet{{8000, 8100}}},
		{"0.0.0.0/0:443", "0.0.0.0/0", portSet{{443, 443}}},
		{"10.1.2.3/8", "10.0.0.0/8", nil}, // masked
		{"192.0.2.1/32", "192.0.2.1/32", nil},
		{"2001:db8::/32", "2001:db8::/32", nil},
		{"::/0", "::/0", nil},
		{"[::]/0:443", "::/0", portSet{{443, 443}}},
		{"[::]/0:80,443", "::/0", portSet{{80, 80}, {443, 443}}},
		{"[2001:db8::]/32", "2001:db8::/32", nil},
		{"[2001:db8::1]/32:22", "2001:db8::/32", portSet{{22, 22}}},
		{"0", "", nil},
		{"10.0.0.0/8:0", "", nil},
		{"10.0.0.0/8:90-80", "", nil},
		{"10.0.0.0/8:x", "", nil},
		{"10.0.0.0/8:", "", nil},
		{"[::]/0:x", "", nil},
		{"[::]/0:", "", nil},
		{"[::]/0", "::/0", nil},
		{"[::/0", "", nil},
		{"300.0.0.0/8", "", nil},
		{"10.0.0.0", "", nil},
		{"10.0.0.0/33", "", nil},
		{"::/0:443", "", nil}, // IPv6 with ports needs brackets
		{"x", "", nil},
		{"", "", nil},
		{"fe80::/10%eth0", "", nil},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseDestRule(tc.in)
			if tc.prefix == "" {
				if err == nil {
					if tc.in == "10.0.0.0/8:" || tc.in == "[::]/0:" {
						t.Skipf("BUG: parseDestRule(%q) accepts an empty port list after ':' (got %v %v)", tc.in, got.prefix, got.ports)
					}
					t.Fatalf("parseDestRule(%q) = %v %v; want an error", tc.in, got.prefix, got.ports)
				}
				return
			}
			if err != nil && strings.HasPrefix(tc.in, "[") {
				t.Skipf("BUG: parseDestRule(%q): %v: the bracketed form takes the prefix length outside the brackets, but only the text inside is parsed", tc.in, err)
			}
			want := destRule{prefix: netip.MustParsePrefix(tc.prefix), ports: tc.ports}
			if err != nil || !reflect.DeepEqual(got, want) {
				t.Fatalf("parseDestRule(%q) = %v %v, %v; want %v %v", tc.in, got.prefix, got.ports, err, want.prefix, want.ports)
			}
		})
	}
}

func FuzzParsePorts(f *testing.F) {
	for _, s := range []string{"80", "80,443", "8000-8100", "1-65535", "0", "90-80", "x", "", "80,", " 80 , 443 ", "1-2-3", "65536"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ps, err := parsePorts(s)
		if err != nil {
			if ps != nil {
				t.Fatalf("parsePorts(%q) returned %v with error %v", s, ps, err)
			}
			return
		}
		if len(ps) == 0 || len(ps) != len(strings.Split(s, ",")) {
			t.Fatalf("parsePorts(%q) = %v: want one range per comma-separated field", s, ps)
		}
		if ps.has(0) {
			t.Fatalf("parsePorts(%q) = %v contains port 0", s, ps)
		}
		var parts []string
		for _, r := range ps {
			if r[0] == 0 || r[0] > r[1] {
				t.Fatalf("parsePorts(%q) = %v: bad range %v", s, ps, r)
			}
			if !ps.has(r[0]) || !ps.has(r[1]) {
				t.Fatalf("parsePorts(%q) = %v: range ends not in the set", s, ps)
			}
			parts = append(parts, fmt.Sprintf("%d-%d", r[0], r[1]))
		}
		// Formatting the set and parsing it again gives the same set.
		again, err := parsePorts(strings.Join(parts, ","))
		if err != nil || !reflect.DeepEqual(again, ps) {
			t.Fatalf("parsePorts(%q) = %v, but reparsed %v, %v", s, ps, again, err)
		}
	})
}

func FuzzParseDestRule(f *testing.F) {
	for _, s := range []string{"80", "10.0.0.0/8", "10.0.0.0/8:80,443", "[::]/0:443", "[2001:db8::]/32", "0",
		"10.0.0.0/8:", "[::]/0:x", "300.0.0.0/8", "[", "]", "[]", "[::/0]:443", "::/0", "10.0.0.0/8:1-2,3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := parseDestRule(s)
		if err != nil {
			if r.prefix.IsValid() || r.ports != nil {
				t.Fatalf("parseDestRule(%q) returned %v %v with error %v", s, r.prefix, r.ports, err)
			}
			return
		}
		if !r.prefix.IsValid() {
			t.Fatalf("parseDestRule(%q): invalid prefix %v", s, r.prefix)
		}
		if r.prefix != r.prefix.Masked() {
			t.Fatalf("parseDestRule(%q): prefix %v not masked", s, r.prefix)
		}
		if r.prefix.Addr().Zone() != "" {
			t.Fatalf("parseDestRule(%q): prefix %v has a zone", s, r.prefix)
		}
		if r.ports != nil && len(r.ports) == 0 {
			t.Fatalf("parseDestRule(%q): empty non-nil port set", s)
		}
		for _, pr := range r.ports {
			if pr[0] == 0 || pr[0] > pr[1] {
				t.Fatalf("parseDestRule(%q): bad port range %v", s, pr)
			}
		}
		if !r.prefix.Contains(r.prefix.Addr()) {
			t.Fatalf("parseDestRule(%q): prefix %v does not contain its own address", s, r.prefix)
		}
	})
}

// TestConfigWarnings: a client leg's options that MPTCP sockets refuse
// (Linux 6.18) are a warning for each MPTCP listener, not an error: its
// TCP clients, and other listeners', still get them. No warning for
// rto_min when the namespace's own minimum is already as low.
func TestConfigWarnings(t *testing.T) {
	const lns = `listeners:
  - {name: m, listen: "127.0.0.1:1080", protocols: [socks5], mptcp: true, allow_clients: ["10.0.0.0/8"], allow_destinations: ["10.0.0.0/8"]}
  - {name: t, listen: "127.0.0.1:1081", protocols: [socks5], allow_clients: ["10.0.0.0/8"], allow_destinations: ["10.0.0.0/8"]}
`
	for _, tc := range []struct {
		name, legs string
		ns         time.Duration // the namespace's net.ipv4.tcp_rto_min_us
		want       []string
	}{
		{"none", "", 0, nil},
		{"what MPTCP takes", "legs: {client: {congestion: cubic, send_buffer: 1MiB, keepalive: 30s}}\n", 0, nil},
		{"rto_min, the namespace's already lower", "legs: {client: {rto_min: 20ms}}\n", 10 * time.Millisecond, nil},
		{"rto_min", "legs: {client: {rto_min: 20ms}}\n", 200 * time.Millisecond,
			[]string{`legs.client: listener "m" accepts Multipath TCP, whose sockets refuse TCP_RTO_MIN_US: protocol not available here: its clients go without them (for rto_min, give the routes toward those clients an rto_min metric, ip route change PREFIX … rto_min 20ms, which MPTCP subflows take, or set the host's net.ipv4.tcp_rto_min_us)`}},
		{"user_timeout and pacing", "legs: {client: {user_timeout: 10s, pacing: true}}\n", 0,
			[]string{`legs.client: listener "m" accepts Multipath TCP, whose sockets refuse TCP_USER_TIMEOUT: protocol not available, SO_MAX_PACING_RATE: operation not supported here: its clients go without them`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.legs + lns))
			if err != nil {
				t.Fatal(err)
			}
			if got := c.warnings(tc.ns); !slices.Equal(got, tc.want) {
				t.Errorf("warnings:\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
	// Relay hops over MPTCP: legs.relay's refused options are named.
	psk := writeTestFile(t, t.TempDir(), "psk", "0123456789abcdef\n")
	c, err := ParseConfig([]byte("auth: {psk_file: " + psk + "}\nlegs: {relay: {user_timeout: 10s}}\nlisteners:\n  - {name: hop, listen: \"127.0.0.1:7100\", protocols: [convert], mptcp: true, allow_clients: [\"10.0.0.0/8\"], allow_destinations: [\"10.0.0.0/8\"]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`legs.relay: listener "hop" takes relay hops over Multipath TCP, whose sockets refuse TCP_USER_TIMEOUT: protocol not available here: those hops go without them`}
	if got := c.relayHopWarnings(); !slices.Equal(got, want) {
		t.Errorf("relay hop warnings:\n%q\nwant\n%q", got, want)
	}
}

// TestConfigForwardSamePort: a port forwarder on every address may forward
// to another host on its own port (0.0.0.0:443 to 10.0.5.20:443, the
// common case); only its own addresses on that port are the listener itself.
func TestConfigForwardSamePort(t *testing.T) {
	for _, tc := range []struct {
		listen, to string
		itself     bool
	}{
		{"0.0.0.0:7300", "192.0.2.20:7300", false},
		{"[::]:7300", "[2001:db8::20]:7300", false},
		{"0.0.0.0:7300", "[::1]:7300", false}, // an IPv4 socket takes no IPv6 flow
		{"0.0.0.0:7300", "127.0.0.1:7300", true},
		{"0.0.0.0:7300", "0.0.0.0:7300", true},
		{"[::]:7300", "[::1]:7300", true},
		{"192.0.2.1:7300", "192.0.2.1:7300", true},
		{"192.0.2.1:7300", "192.0.2.2:7300", false},
	} {
		conf := fmt.Sprintf("listeners:\n  - {name: f, listen: %q, mode: forward, forward_to: %q}\n", tc.listen, tc.to)
		_, err := ParseConfig([]byte(conf))
		if got := err != nil && strings.Contains(err.Error(), "the listener itself"); got != tc.itself || err != nil && !got {
			t.Errorf("listen %s, forward_to %s: %v; want the listener itself: %v", tc.listen, tc.to, err, tc.itself)
		}
	}
}

// TestConfigPSKFileUnneeded: a psk_file that no listener or route needs
// yet is still read by New (and by every reload): one missing or too
// short is the file's error, so that --check and a reload's check refuse
// what the relay would then refuse to start with.
func TestConfigPSKFileUnneeded(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ name, path, want string }{
		{"missing", filepath.Join(dir, "absent"), "no such file"},
		{"too short", writeTestFile(t, dir, "short", "0123456789abcde\n"), "want at least 16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			y := fmt.Sprintf("auth: {psk_file: %q}\nlisteners: [{name: a, listen: \"127.0.0.1:1080\", protocols: [socks5], allow_clients: [\"10.0.0.0/8\"], allow_destinations: [\"10.0.0.0/8\"]}]\n", tc.path)
			cfg, err := ParseConfig([]byte(y))
			if err == nil {
				_, nerr := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
				t.Fatalf("ParseConfig accepted psk_file %s; New then says %v", tc.path, nerr)
			}
			if !strings.Contains(err.Error(), "auth.psk_file: ") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParseConfig: %v; want an auth.psk_file error saying %q", err, tc.want)
			}
		})
	}
}

// TestConfigCaptureMarkTable32: a capture mark or table is a 32-bit
// number to nft and ip; a larger one is the file's error, not a start
// that fails in nft or ip rule.
func TestConfigCaptureMarkTable32(t *testing.T) {
	for _, capture := range []string{"{ports: \"80\", mark: 4294967296}", "{ports: \"80\", table: 4294967396}"} {
		y := "listeners:\n  - {name: web, listen: \"0.0.0.0:7000\", mode: tproxy, capture: " + capture + "}\n"
		if _, err := ParseConfig([]byte(y)); err == nil || !strings.Contains(err.Error(), "listeners[0].capture") {
			t.Errorf("capture %s: ParseConfig says %v, want a listeners[0].capture error", capture, err)
		}
	}
}

// TestConfigUsersFileWhereNoLogin: users_file on a listener that asks no
// login (forward, transparent, or one that takes Convert hops alone)
// would be ignored, the listener open to every allowed client: it is the
// file's error.
func TestConfigUsersFileWhereNoLogin(t *testing.T) {
	dir := t.TempDir()
	users := writeTestFile(t, dir, "users", "alice:secret\n")
	psk := writeTestFile(t, dir, "psk", "0123456789abcdef\n")
	for _, ln := range []string{
		fmt.Sprintf("{name: f, listen: \"127.0.0.1:7000\", mode: forward, forward_to: \"10.0.0.1:80\", users_file: %q}", users),
		fmt.Sprintf("{name: t, listen: \"0.0.0.0:7000\", mode: tproxy, users_file: %q}", users),
		fmt.Sprintf("{name: c, listen: \"127.0.0.1:7000\", protocols: [convert], allow_clients: [\"10.0.0.0/8\"], allow_destinations: [\"10.0.0.0/8\"], users_file: %q}", users),
	} {
		y := fmt.Sprintf("auth: {psk_file: %q}\nlisteners:\n  - %s\n", psk, ln)
		if _, err := ParseConfig([]byte(y)); err == nil || !strings.Contains(err.Error(), "listeners[0].users_file") {
			t.Errorf("%s: ParseConfig says %v, want a listeners[0].users_file error", ln, err)
		}
	}
}

// TestConfigListenMapped: a listener on an IPv4-mapped IPv6 address
// ([::ffff:127.0.0.1]:1080) would ask for an IPv6 socket, which cannot
// bind it: the file's error, naming the IPv4 address to write.
func TestConfigListenMapped(t *testing.T) {
	y := "admin: {listen: off}\nlisteners:\n  - {name: a, listen: \"[::ffff:127.0.0.1]:0\", mode: forward, forward_to: \"127.0.0.1:9\"}\n"
	cfg, err := ParseConfig([]byte(y))
	if err == nil {
		s, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err = s.Run(ctx, time.Second)
		}
		t.Fatalf("ParseConfig accepted listen [::ffff:127.0.0.1]:0; the relay then says %v", err)
	}
	if !strings.Contains(err.Error(), `listeners[0].listen: "[::ffff:127.0.0.1]:0"`) || !strings.Contains(err.Error(), "127.0.0.1:0") {
		t.Errorf("ParseConfig: %v; want a listeners[0].listen error naming 127.0.0.1:0", err)
	}
}
