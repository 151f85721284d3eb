package strictyaml

import (
	"bytes"
	"errors"
	"math"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// duration stands in for the daemon's own duration type: it exercises the
// encoding.TextUnmarshaler path and the verbatim use of its error message.
type duration time.Duration

func (d *duration) UnmarshalText(b []byte) error {
	x, err := time.ParseDuration(string(b))
	if err != nil {
		return errors.New("want a duration like 10ms")
	}
	*d = duration(x)
	return nil
}

// ifname is a map key type that checks its text.
type ifname string

func (n *ifname) UnmarshalText(b []byte) error {
	if !strings.HasPrefix(string(b), "eth") {
		return errors.New("want an interface name like eth0")
	}
	*n = ifname(b)
	return nil
}

// asym is a per-direction value written either as one scalar for both
// directions or as {ab: X, ba: Y}; it exercises Unmarshaler and DecodeField.
type asym struct {
	AB, BA duration
}

func (a *asym) UnmarshalYAMLNode(d *Decoder, n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		d.Decode(n, &a.AB)
		a.BA = a.AB
		return nil
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			switch k.Value {
			case "ab":
				d.DecodeField("ab", v, &a.AB)
			case "ba":
				d.DecodeField("ba", v, &a.BA)
			default:
				d.Errorf(k, "want ab or ba")
			}
		}
		return nil
	}
	return errors.New("want a duration or {ab: duration, ba: duration}")
}

type link struct {
	Name   string   `yaml:"name"`
	Delay  duration `yaml:"delay"`
	Jitter *asym    `yaml:"jitter"`
	MTU    uint16   `yaml:"mtu,omitempty"`
	Weight int8     `yaml:"weight"`
	Loss   float64  `yaml:"loss"`
	Up     *bool    `yaml:"up"`
}

type node struct {
	Port  int      `yaml:"port"`
	Addrs []string `yaml:"addrs"`
}

type Common struct {
	Log   string `yaml:"log"`
	Debug bool   `yaml:"debug"`
}

type config struct {
	Common   `yaml:",inline"`
	Name     string            `yaml:"name"`
	Links    []link            `yaml:"links"`
	Nodes    map[string]node   `yaml:"nodes"`
	Hosts    map[ifname]string `yaml:"hosts"`
	Extra    any               `yaml:"extra"`
	Ratio    float32           `yaml:"ratio"`
	Big      uint64            `yaml:"big"`
	Small    int64             `yaml:"small"`
	Skip     string            `yaml:"-"`
	Untagged int
	hidden   int
}

func TestDecode(t *testing.T) {
	tru := true
	tests := []struct {
		name string
		doc  string
		want []string // exact Error() of each *Error, in order
		// check, if set, inspects the result; it runs even when errors are
		// expected, to show that decoding went on past them.
		check func(t *testing.T, c *config)
	}{
		{
			name: "valid",
			doc: `name: lab
log: debug
debug: true
untagged: 3
links:
  - name: a
    delay: 5ms
    jitter: 1ms
    mtu: 1500
    weight: -128
    loss: 0.5
    up: true
  - name: b
    jitter: {ab: 2ms, ba: 3ms}
    loss: 1
    up: ~
nodes:
  r1: {port: 0x1F, addrs: [10.0.0.1, "10.0.0.2"]}
  r2:
hosts:
  eth0: r1
ratio: .inf
big: 18446744073709551615
small: -9223372036854775808
`,
			check: func(t *testing.T, c *config) {
				want := config{
					Common:   Common{Log: "debug", Debug: true},
					Name:     "lab",
					Untagged: 3,
					Links: []link{
						{Name: "a", Delay: duration(5 * time.Millisecond),
							Jitter: &asym{AB: duration(time.Millisecond), BA: duration(time.Millisecond)},
							MTU:    1500, Weight: -128, Loss: 0.5, Up: &tru},
						{Name: "b", Jitter: &asym{AB: duration(2 * time.Millisecond), BA: duration(3 * time.Millisecond)},
							Loss: 1},
					},
					Nodes: map[string]node{
						"r1": {Port: 31, Addrs: []string{"10.0.0.1", "10.0.0.2"}},
						"r2": {},
					},
					Hosts: map[ifname]string{"eth0": "r1"},
					Ratio: float32(math.Inf(1)),
					Big:   math.MaxUint64,
					Small: math.MinInt64,
				}
				if !reflect.DeepEqual(*c, want) {
					t.Errorf("got  %+v\nwant %+v", *c, want)
				}
			},
		},
		{
			name: "text unmarshaler error is verbatim",
			doc: `name: lab
links:
  - name: a
    delay: 5ms
  - name: b
    delay: 10 ms
`,
			want: []string{`links[1].delay: "10 ms": want a duration like 10ms (line 6)`},
			check: func(t *testing.T, c *config) {
				if len(c.Links) != 2 || c.Links[0].Delay != duration(5*time.Millisecond) || c.Links[1].Name != "b" {
					t.Errorf("links not decoded around the error: %+v", c.Links)
				}
			},
		},
		{
			name: "text unmarshaler wants a scalar",
			doc:  "links: [{delay: [1]}]\n",
			want: []string{`links[0].delay: want a scalar, got a list (line 1)`},
		},
		{
			name: "unknown fields at depth",
			doc: `links:
  - name: a
  - name: b
    foo: 1
    colour: red
nodes:
  r1: {port: 1, bar: 2}
`,
			want: []string{
				`links[1].foo: unknown field (line 4)`,
				`links[1].colour: unknown field (line 5)`,
				`nodes.r1.bar: unknown field (line 7)`,
			},
		},
		{
			name: "dash and unexported fields are unknown",
			doc:  "skip: x\nhidden: 1\nUntagged: 2\n",
			want: []string{
				`skip: unknown field (line 1)`,
				`hidden: unknown field (line 2)`,
				`Untagged: unknown field (line 3)`,
			},
		},
		{
			name: "keys are case sensitive",
			doc:  "Name: x\n",
			want: []string{`Name: unknown field (line 1)`},
		},
		{
			name: "collection kind mismatches",
			doc: `links:
  a: 1
nodes: [1, 2]
name: {first: x}
extra: 1
`,
			want: []string{
				`links: want a list, got a mapping (line 2)`,
				`nodes: want a mapping, got a list (line 3)`,
				`name: want a string, got a mapping (line 4)`,
			},
		},
		{
			name: "scalar where a struct is expected",
			doc:  "links:\n  - x\n",
			want: []string{`links[0]: "x": want a mapping, got a scalar (line 2)`},
		},
		{
			name: "document root must be a mapping",
			doc:  "- a\n- b\n",
			want: []string{`want a mapping, got a list (line 1)`},
		},
		{
			name: "scalar root",
			doc:  "hello\n",
			want: []string{`"hello": want a mapping, got a scalar (line 1)`},
		},
		{
			name: "bools are true or false only",
			doc: `debug: yes
links:
  - up: on
  - up: TRUE
  - up: False
  - up: [true]
`,
			want: []string{
				`debug: "yes": want true or false (line 1)`,
				`links[0].up: "on": want true or false (line 3)`,
				`links[3].up: want true or false, got a list (line 6)`,
			},
			check: func(t *testing.T, c *config) {
				if len(c.Links) != 4 || !*c.Links[1].Up || *c.Links[2].Up {
					t.Errorf("TRUE/False not accepted: %+v", c.Links)
				}
			},
		},
		{
			name: "integers",
			doc: `links:
  - mtu: 70000
  - mtu: -1
  - mtu: 1.5
  - weight: 128
  - weight: -129
  - weight: 1_0
  - weight: 0b1
  - mtu: 0o17
  - mtu: +010
big: 18446744073709551616
small: 9223372036854775808
untagged: 99999999999999999999999
`,
			want: []string{
				`links[0].mtu: "70000": overflows uint16 (line 2)`,
				`links[1].mtu: "-1": want a non-negative integer (line 3)`,
				`links[2].mtu: "1.5": want an integer (line 4)`,
				`links[3].weight: "128": overflows int8 (line 5)`,
				`links[4].weight: "-129": overflows int8 (line 6)`,
				`links[5].weight: "1_0": want an integer (line 7)`,
				`links[6].weight: "0b1": want an integer (line 8)`,
				`big: "18446744073709551616": overflows uint64 (line 11)`,
				`small: "9223372036854775808": overflows int64 (line 12)`,
				`untagged: "99999999999999999999999": overflows int (line 13)`,
			},
			check: func(t *testing.T, c *config) {
				if c.Links[7].MTU != 15 || c.Links[8].MTU != 10 {
					t.Errorf("0o17, +010 = %d, %d; want 15, 10", c.Links[7].MTU, c.Links[8].MTU)
				}
			},
		},
		{
			name: "floats",
			doc: `links:
  - loss: fast
  - loss: 1e400
  - loss: -.5e-3
  - loss: inf
  - loss: 0x10
ratio: 1e39
`,
			want: []string{
				`links[0].loss: "fast": want a number (line 2)`,
				`links[1].loss: "1e400": overflows float64 (line 3)`,
				`links[3].loss: "inf": want a number (line 5)`,
				`ratio: "1e39": overflows float32 (line 7)`,
			},
			check: func(t *testing.T, c *config) {
				if c.Links[2].Loss != -0.0005 || c.Links[4].Loss != 16 {
					t.Errorf("loss = %v, %v; want -0.0005, 16", c.Links[2].Loss, c.Links[4].Loss)
				}
			},
		},
		{
			name: "quoted and tagged scalars keep their type",
			doc: `debug: "true"
links:
  - weight: "10"
  - mtu: !!bool 1
  - name: !!int 5
  - loss: '0.5'
  - weight: !!int 7
  - loss: !!int 2
  - name: !!str 5
  - up: !!bool true
`,
			want: []string{
				`debug: "true": want true or false, not a value quoted (a string) (line 1)`,
				`links[0].weight: "10": want an integer, not a value quoted (a string) (line 3)`,
				`links[1].mtu: "1": want an integer, not a value tagged !!bool (line 4)`,
				`links[2].name: "5": want a string, not a value tagged !!int (line 5)`,
				`links[3].loss: "0.5": want a number, not a value quoted (a string) (line 6)`,
			},
			check: func(t *testing.T, c *config) {
				if c.Links[4].Weight != 7 || c.Links[5].Loss != 2 || c.Links[6].Name != "5" || !*c.Links[7].Up {
					t.Errorf("tags of the right type not taken: %+v", c.Links[4:])
				}
			},
		},
		{
			name: "a value tagged !!null must be null",
			doc: `name: !!null x
links:
  - mtu: !!null 5
  - up: !!null false
  - delay: !!null 5ms
log: !!null
extra: {a: !!null b, c: !!null ~, d: !!null ''}
`,
			want: []string{
				`name: "x": want null, ~ or nothing for a value tagged !!null (line 1)`,
				`links[0].mtu: "5": want null, ~ or nothing for a value tagged !!null (line 3)`,
				`links[1].up: "false": want null, ~ or nothing for a value tagged !!null (line 4)`,
				`links[2].delay: "5ms": want null, ~ or nothing for a value tagged !!null (line 5)`,
				`extra.a: "b": want null, ~ or nothing for a value tagged !!null (line 7)`,
			},
		},
		{
			name: "strings keep scalars as written",
			doc:  "name: 0123\nlog: 1.50\nlinks: [{name: true}, {name: ''}]\n",
			check: func(t *testing.T, c *config) {
				if c.Name != "0123" || c.Log != "1.50" || c.Links[0].Name != "true" || c.Links[1].Name != "" {
					t.Errorf("got %q %q %+v", c.Name, c.Log, c.Links)
				}
			},
		},
		{
			name: "null sets pointers slices and maps to nil and leaves the rest",
			doc:  "name: ~\nlinks:\nnodes: null\nextra: ~\nlog: ''\n",
			check: func(t *testing.T, c *config) {
				if c.Name != "" || c.Links != nil || c.Nodes != nil || c.Extra != nil {
					t.Errorf("got %+v", c)
				}
			},
		},
		{
			name: "pointers allocated only for non-null",
			doc:  "links: [{up: false}, {up: null}, {}]\n",
			check: func(t *testing.T, c *config) {
				if c.Links[0].Up == nil || *c.Links[0].Up || c.Links[1].Up != nil || c.Links[2].Up != nil || c.Links[0].Jitter != nil {
					t.Errorf("got %+v", c.Links)
				}
			},
		},
		{
			name: "unmarshaler",
			doc: `links:
  - jitter: {ab: 1ms, ba: x}
  - jitter: [1ms]
  - jitter: {ab: 1ms, up: 2ms}
  - jitter: 1 ms
`,
			want: []string{
				`links[0].jitter.ba: "x": want a duration like 10ms (line 2)`,
				`links[1].jitter: want a duration or {ab: duration, ba: duration} (line 3)`,
				`links[2].jitter: "up": want ab or ba (line 4)`,
				`links[3].jitter: "1 ms": want a duration like 10ms (line 5)`,
			},
			check: func(t *testing.T, c *config) {
				if c.Links[0].Jitter.AB != duration(time.Millisecond) {
					t.Errorf("jitter.ab = %v", c.Links[0].Jitter.AB)
				}
			},
		},
		{
			name: "duplicate keys",
			doc: `name: a
links:
  - name: x
    name: y
nodes:
  r1: {}
  r1: {}
name: b
`,
			want: []string{
				`links[0].name: duplicate key (line 4)`,
				`nodes.r1: duplicate key (line 7)`,
				`name: duplicate key (line 8)`,
			},
			check: func(t *testing.T, c *config) {
				if c.Name != "a" || c.Links[0].Name != "x" {
					t.Errorf("first value should win: %q %q", c.Name, c.Links[0].Name)
				}
			},
		},
		{
			name: "aliases resolve to their anchor",
			doc: `nodes:
  r1: &n {port: 1, addrs: [a]}
  r2: *n
links:
  - &l {name: x, bogus: 1}
  - *l
`,
			want: []string{
				`links[0].bogus: unknown field (line 5)`,
				`links[1].bogus: unknown field (line 5)`,
			},
			check: func(t *testing.T, c *config) {
				if c.Nodes["r2"].Port != 1 || c.Links[1].Name != "x" {
					t.Errorf("aliases not followed: %+v %+v", c.Nodes, c.Links)
				}
			},
		},
		{
			name: "merge keys are rejected",
			doc: `links:
  - &base {name: x}
  - <<: *base
    mtu: 9000
`,
			want: []string{`links[1]: "<<": merge keys are not supported (line 3)`},
		},
		{
			name: "quoted merge is an ordinary key",
			doc:  "nodes: {'<<': {port: 1}}\n",
			check: func(t *testing.T, c *config) {
				if c.Nodes["<<"].Port != 1 {
					t.Errorf("got %+v", c.Nodes)
				}
			},
		},
		{
			name: "alias cycle",
			doc:  "extra: &a [1, *a]\n",
			want: []string{`extra[1][1]: alias *a refers to a node that contains it (line 1)`},
		},
		{
			name: "map keys that are not identifiers are quoted in paths",
			doc:  "nodes:\n  a b: {port: x}\n  \"1\": {port: 2}\n  r-1.x: {addrs: 3}\n",
			want: []string{
				`nodes["a b"].port: "x": want an integer (line 2)`,
				`nodes["r-1.x"].addrs: "3": want a list, got a scalar (line 4)`,
			},
		},
		{
			name: "text unmarshaler map keys",
			doc:  "hosts:\n  eth0: a\n  10.0.0.1: b\n",
			want: []string{`hosts["10.0.0.1"]: "10.0.0.1": want an interface name like eth0 (line 3)`},
		},
		{
			name: "non-scalar keys",
			doc:  "nodes:\n  ? [a]\n  : {}\n",
			want: []string{`nodes: want a scalar key, got a list (line 2)`},
		},
		{
			name: "any decodes to plain values",
			doc: `extra:
  s: hello
  q: "1"
  i: -12
  h: 0x10
  f: 1.5
  inf: -.inf
  b: true
  n: ~
  l: [1, two, [3]]
  m: {k: v}
  t: 2024-01-01
  tagged: !!str 12
  old: 0777
  custom: !thing 5
`,
			check: func(t *testing.T, c *config) {
				want := map[string]any{
					"s": "hello", "q": "1", "i": -12, "h": 16, "f": 1.5, "inf": math.Inf(-1),
					"b": true, "n": nil, "l": []any{1, "two", []any{3}}, "m": map[string]any{"k": "v"},
					"t": "2024-01-01", "tagged": "12", "old": 777, "custom": "5",
				}
				if !reflect.DeepEqual(c.Extra, want) {
					t.Errorf("got  %#v\nwant %#v", c.Extra, want)
				}
			},
		},
		{
			name: "any reports bad tagged scalars and duplicates",
			doc:  "extra:\n  a: !!int x\n  b: !!bool yes\n  c: !!float z\n  a: 1\n  d: 99999999999999999999\n",
			want: []string{
				`extra.a: "x": want an integer (line 2)`,
				`extra.b: "yes": want true or false (line 3)`,
				`extra.c: "z": want a number (line 4)`,
				`extra.a: duplicate key (line 5)`,
				`extra.d: "99999999999999999999": overflows int (line 6)`,
			},
		},
		{
			name: "empty document",
			doc:  "",
		},
		{
			name: "only comments",
			doc:  "# nothing here\n\n   # still nothing\n",
		},
		{
			name: "explicit empty document",
			doc:  "---\n...\n",
		},
		{
			name: "multiple documents",
			doc:  "name: a\n---\nname: b\n",
			want: []string{`want one YAML document (line 2)`},
		},
		{
			name: "syntax error",
			doc:  "name: a\nlinks: [\n  - x: y: z\n",
			want: []string{`did not find expected node content (line 3)`},
		},
		{
			name: "syntax error in mapping",
			doc:  "name: a\n  bad: b\n",
			want: []string{`mapping values are not allowed in this context (line 2)`},
		},
		{
			name: "unknown anchor",
			doc:  "name: *nope\n",
			want: []string{`unknown anchor 'nope' referenced (line 1)`},
		},
		{
			name: "many errors at once, sorted by line then path",
			doc: `links:
  - {weight: x, name: [1], mtu: -3}
  - delay: soon
    bogus: true
name: {}
debug: maybe
`,
			want: []string{
				`links[0].mtu: "-3": want a non-negative integer (line 2)`,
				`links[0].name: want a string, got a list (line 2)`,
				`links[0].weight: "x": want an integer (line 2)`,
				`links[1].delay: "soon": want a duration like 10ms (line 3)`,
				`links[1].bogus: unknown field (line 4)`,
				`name: want a string, got a mapping (line 5)`,
				`debug: "maybe": want true or false (line 6)`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c config
			err := Decode([]byte(tt.doc), &c)
			if got := errorLines(t, err); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("errors:\n got  %q\n want %q", got, tt.want)
			}
			if tt.check != nil {
				tt.check(t, &c)
			}
		})
	}
}

// errorLines checks that err is nil or a non-empty Errors and returns the
// message of each element.
func errorLines(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		return nil
	}
	var errs Errors
	if !errors.As(err, &errs) || len(errs) == 0 {
		t.Fatalf("error is %T %v, want a non-empty Errors", err, err)
	}
	lines := make([]string, len(errs))
	for i, e := range errs {
		lines[i] = e.Error()
	}
	if err.Error() != strings.Join(lines, "\n") {
		t.Errorf("Errors.Error() = %q, want the elements joined by newlines", err.Error())
	}
	return lines
}

func TestErrorString(t *testing.T) {
	tests := []struct {
		err  *Error
		want string
	}{
		{&Error{Path: "links[1].delay", Line: 7, Value: "10 ms", Msg: "want a duration like 10ms"},
			`links[1].delay: "10 ms": want a duration like 10ms (line 7)`},
		{&Error{Path: "links[0].colour", Line: 4, Msg: "unknown field"}, `links[0].colour: unknown field (line 4)`},
		{&Error{Path: "nodes", Line: 2, Msg: "want a list, got a mapping"}, `nodes: want a list, got a mapping (line 2)`},
		{&Error{Msg: "want one YAML document"}, `want one YAML document`},
		{&Error{Value: "a\"b\n", Msg: "m"}, `"a\"b\n": m`},
		{&Error{Path: "x", Msg: "m", scalar: true}, `x: "": m`},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("got %q, want %q", got, tt.want)
		}
	}
}

func TestEmptyScalarValueIsShown(t *testing.T) {
	var c config
	err := Decode([]byte("links: [{weight: ''}]\n"), &c)
	if got, want := errorLines(t, err), []string{`links[0].weight: "": want an integer, not a value quoted (a string) (line 1)`}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestDecodeTargets(t *testing.T) {
	t.Run("non-pointer", func(t *testing.T) {
		var c config
		err := Decode([]byte("name: x\n"), c)
		if got := errorLines(t, err); len(got) != 1 || !strings.Contains(got[0], "non-nil pointer") {
			t.Errorf("got %q", got)
		}
	})
	t.Run("nil pointer", func(t *testing.T) {
		if err := Decode([]byte("name: x\n"), (*config)(nil)); err == nil {
			t.Error("no error")
		}
		if err := Decode([]byte("name: x\n"), nil); err == nil {
			t.Error("no error")
		}
	})
	t.Run("into any", func(t *testing.T) {
		var v any
		if err := Decode([]byte("a: [1, x]\n"), &v); err != nil {
			t.Fatal(err)
		}
		if want := map[string]any{"a": []any{1, "x"}}; !reflect.DeepEqual(v, want) {
			t.Errorf("got %#v", v)
		}
	})
	t.Run("into pointer to pointer", func(t *testing.T) {
		var p *config
		if err := Decode([]byte("name: x\n"), &p); err != nil || p == nil || p.Name != "x" {
			t.Errorf("got %v, %+v", err, p)
		}
	})
	t.Run("defaults survive absent keys", func(t *testing.T) {
		c := config{Name: "default", Links: []link{{Name: "l"}}}
		if err := Decode([]byte("log: x\n"), &c); err != nil || c.Name != "default" || len(c.Links) != 1 {
			t.Errorf("got %v, %+v", err, c)
		}
		if err := Decode([]byte("# empty\n"), &c); err != nil || c.Name != "default" {
			t.Errorf("got %v, %+v", err, c)
		}
	})
	t.Run("unsupported types", func(t *testing.T) {
		var v struct {
			C chan int       `yaml:"c"`
			M map[int]string `yaml:"m"`
			S stringer       `yaml:"s"`
		}
		err := Decode([]byte("c: 1\nm: {1: a}\ns: x\n"), &v)
		want := []string{
			`c: "1": strictyaml: cannot decode into Go type chan int (line 1)`,
			`m: strictyaml: cannot decode into Go type map[int]string: keys must be strings (line 2)`,
			`s: "x": strictyaml: cannot decode into Go type strictyaml.stringer (line 3)`,
		}
		if got := errorLines(t, err); !reflect.DeepEqual(got, want) {
			t.Errorf("got  %q\nwant %q", got, want)
		}
	})
	t.Run("conflicting tags", func(t *testing.T) {
		var v struct {
			A int `yaml:"x"`
			B int `yaml:"x"`
		}
		err := Decode([]byte("x: 1\n"), &v)
		if got := errorLines(t, err); len(got) != 1 || !strings.Contains(got[0], `two fields use the key "x"`) {
			t.Errorf("got %q", got)
		}
	})
	t.Run("arrays", func(t *testing.T) {
		var v struct {
			A [2]int `yaml:"a"`
			B [2]int `yaml:"b"`
		}
		err := Decode([]byte("a: [1, 2]\nb: [1]\n"), &v)
		want := []string{`b: want a list of 2 items, got 1 (line 2)`}
		if got := errorLines(t, err); !reflect.DeepEqual(got, want) || v.A != [2]int{1, 2} {
			t.Errorf("got %q, %v", got, v.A)
		}
	})
}

// stringer is an interface with methods, which Decode cannot fill.
type stringer interface{ String() string }

type inner struct {
	Deep string `yaml:"deep"`
}

type Middle struct {
	*inner `yaml:",inline"` // unexported pointer: reported, not a panic
	Mid    string           `yaml:"mid"`
}

type Outer struct {
	Middle `yaml:",inline"`
	Ptr    *Common `yaml:",inline"`
	inner  `yaml:",inline"`
	Top    string `yaml:"top"`
}

func TestInline(t *testing.T) {
	var v Outer
	err := Decode([]byte("top: a\nmid: b\nlog: c\ndeep: d\n"), &v)
	got := errorLines(t, err)
	if len(got) != 1 || !strings.Contains(got[0], "cannot inline an unexported field") {
		t.Errorf("got %q", got)
	}
	if v.Top != "a" || v.Mid != "b" || v.Ptr == nil || v.Ptr.Log != "c" || v.inner.Deep != "d" {
		t.Errorf("got %+v", v)
	}
}

// where records the path it was decoded at.
type where struct{ path string }

func (w *where) UnmarshalYAMLNode(d *Decoder, n *yaml.Node) error {
	w.path = d.Path()
	var notPointer struct{}
	d.Decode(n, notPointer)
	return nil
}

func TestDecoderPath(t *testing.T) {
	var v struct {
		L []where `yaml:"l"`
	}
	err := Decode([]byte("l: [1, 2]\n"), &v)
	want := []string{
		`l[0]: "1": strictyaml: Decoder.Decode needs a non-nil pointer, got struct {} (line 1)`,
		`l[1]: "2": strictyaml: Decoder.Decode needs a non-nil pointer, got struct {} (line 1)`,
	}
	if got := errorLines(t, err); !reflect.DeepEqual(got, want) {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	if len(v.L) != 2 || v.L[0].path != "l[0]" || v.L[1].path != "l[1]" {
		t.Errorf("got %+v", v.L)
	}
}

func TestAliasBomb(t *testing.T) {
	doc := `a: &a [x, x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
`
	var v any
	err := Decode([]byte(doc), &v)
	got := errorLines(t, err)
	if len(got) != 1 || !strings.Contains(got[0], "document is too large once aliases are expanded") {
		t.Errorf("got %q", got)
	}
}

func FuzzDecode(f *testing.F) {
	seeds := []string{
		"",
		"name: lab\nlinks:\n  - {name: a, delay: 5ms, jitter: {ab: 1ms, ba: 2ms}, mtu: 1500}\n",
		"links: [&a {name: x}, *a, {<<: *a}]\n",
		"extra: &a [1, *a]\n",
		"nodes: {r1: {port: 0x1F, addrs: [a, b]}, r1: {}}\nhosts: {eth0: x, bad: y}\n",
		"extra: {a: !!int x, b: [~, .inf, -.NaN, 0o17, 1e400]}\n",
		"a: b\n---\nc: d\n",
		"[",
		"? [a]\n: b\n",
		"debug: yes\nratio: 1e39\nbig: -0\nsmall: -9223372036854775809\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// badCharLine does not decode UTF-16: its bad characters have no line.
		utf16 := bytes.HasPrefix(data, []byte{0xfe, 0xff}) || bytes.HasPrefix(data, []byte{0xff, 0xfe})
		var c config
		checkFuzzError(t, Decode(data, &c), !utf16)
		var v any
		checkFuzzError(t, Decode(data, &v), !utf16)
	})
}

// checkFuzzError fails on panics that the top-level guard turned into
// errors, so the fuzzer still finds them, and, if wantLine, on an error
// without a line.
func checkFuzzError(t *testing.T, err error, wantLine bool) {
	if err == nil {
		return
	}
	var errs Errors
	if !errors.As(err, &errs) || len(errs) == 0 {
		t.Fatalf("error is %T %v, want a non-empty Errors", err, err)
	}
	for _, e := range errs {
		if e == nil || strings.Contains(e.Msg, "internal error") {
			t.Fatalf("bad error %v", e)
		}
		if wantLine && e.Line == 0 {
			t.Fatalf("error without a line: %v", e)
		}
		_ = e.Error()
	}
}

// TestSyntaxErrorLines checks that every error the YAML parser reports names
// the line it is on: yaml.v3 leaves the line out on the first line and for
// unknown anchors and bad encodings, and counts the parser's (not the
// scanner's) lines from 0.
func TestSyntaxErrorLines(t *testing.T) {
	tests := []struct {
		name, doc, want string
	}{
		{"scanner error, line 1", "a: b: c\n", "mapping values are not allowed in this context (line 1)"},
		{"scanner error, line 3", "a: 1\nb: 2\nc: d: e\n", "mapping values are not allowed in this context (line 3)"},
		{"leading tab", "\ta: 1\n", "found character that cannot start any token (line 1)"},
		{"tab indentation", "a:\n\tb: 1\n", "found character that cannot start any token (line 2)"},
		{"parser error, line 1", ": 1\n", "did not find expected key (line 1)"},
		{"parser error, line 2", "a: 1\n: 1\n", "did not find expected key (line 2)"},
		{"parser error, line 3", "a: 1\nb: 2\n: 1\n", "did not find expected key (line 3)"},
		{"sequence after mapping", "a: 1\n- b\n", "did not find expected key (line 2)"},
		{"unclosed flow sequence", "a: 1\nb: [1\n", "did not find expected ',' or ']' (line 2)"},
		{"unclosed flow mapping", "a: 1\nb: 2\nc: {1\n", "did not find expected ',' or '}' (line 3)"},
		{"unknown anchor", "a: 1\nb: [x, *nope]\n", "unknown anchor 'nope' referenced (line 2)"},
		{"unknown anchor after a longer one", "a: &nope1 1\nb: *nope1\nc: *nope\n", "unknown anchor 'nope' referenced (line 3)"},
		{"unknown anchor as a key", "a: 1\nb: {*nope: 1}\n", "unknown anchor 'nope' referenced (line 2)"},
		{"unknown anchor as a block key", "a: 1\nb:\n  *nope: 1\n", "unknown anchor 'nope' referenced (line 3)"},
		{"unknown anchor right after a JSON key", "a: 1\nb: {\"k\":*nope}\n", "unknown anchor 'nope' referenced (line 2)"},
		{"invalid UTF-8", "a: 1\nb: \xff\n", "invalid leading UTF-8 octet (line 2)"},
		{"truncated UTF-8", "a: 1\nb: 2\nc: \xc3\n", "invalid trailing UTF-8 octet (line 3)"},
		{"control character", "a: 1\nb: 2\nc: \x01\n", "control characters are not allowed (line 3)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v any
			got := errorLines(t, Decode([]byte(tt.doc), &v))
			if len(got) != 1 || got[0] != tt.want {
				t.Errorf("Decode(%q) errors %q, want [%q]", tt.doc, got, tt.want)
			}
		})
	}
}

func TestLocate(t *testing.T) {
	doc := `name: lab
links:
  - name: a
    delay: 5ms
  -
    name: b
nodes:
  "x.y": {port: 1}
  base: &b {port: 2}
  copy: *b
`
	tests := []struct {
		path string
		line int
	}{
		{"name", 1},
		{"links", 2},
		{"links[0]", 3},
		{"links[0].delay", 4},
		{"links[1]", 6},
		{"links[1].name", 6},
		{"links[1].mtu", 6},  // absent: its mapping's line
		{"links[7].name", 2}, // absent: the list's line
		{"nodes[\"x.y\"].port", 8},
		{"nodes.copy.port", 9}, // through the alias, to the anchor's key
		{"nodes.base.port.x", 9},
		{"colour", 0},
		{"", 0},
		{"links[x]", 2},
		{"nodes[\"x.y", 7},
	}
	for _, tt := range tests {
		errs := Errors{{Path: tt.path, Msg: "m"}, {Path: tt.path, Line: 99, Msg: "kept"}}
		Locate([]byte(doc), errs)
		if errs[0].Line != tt.line || errs[1].Line != 99 {
			t.Errorf("%q: line %d (and %d), want %d (and 99)", tt.path, errs[0].Line, errs[1].Line, tt.line)
		}
	}
	// A document that does not parse leaves the errors as they were.
	errs := Errors{{Path: "name", Msg: "m"}}
	Locate([]byte("name: [\n"), errs)
	if errs[0].Line != 0 {
		t.Errorf("unparsable document: line %d, want 0", errs[0].Line)
	}
}

// TestDeepDocumentMemory: decoding a deeply nested document costs memory
// in proportion to its size, as parsing it does, not to the square of its
// depth (a path string per level, each a copy of its parent's).
func TestDeepDocumentMemory(t *testing.T) {
	const depth = 5000
	key := strings.Repeat("k", 32)
	doc := "extra: " + strings.Repeat("{"+key+": ", depth) + "x" + strings.Repeat("}", depth) + "\n"
	allocated := func(f func()) uint64 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		f()
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	parse := allocated(func() {
		var n yaml.Node
		if err := yaml.Unmarshal([]byte(doc), &n); err != nil {
			t.Fatal(err)
		}
	})
	decode := allocated(func() {
		var c config
		if err := Decode([]byte(doc), &c); err != nil {
			t.Fatal(err)
		}
	})
	if decode > 4*parse {
		t.Errorf("Decode of a %d-byte document %d levels deep allocated %d MiB, parsing it %d MiB: want at most 4 times as much",
			len(doc), depth, decode>>20, parse>>20)
	}
}
