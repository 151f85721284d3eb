// Package strictyaml decodes a YAML configuration file into Go structs and
// reports every problem at once, each tied to the field path and line where it
// occurs, so that an operator can fix a broken file in one pass instead of one
// error per restart.
//
// Unknown keys, duplicate keys, type mismatches and malformed scalars are all
// errors; nothing is silently dropped or coerced.
//
//	type Link struct {
//		Name  string   `yaml:"name"`
//		Delay Duration `yaml:"delay"` // *Duration implements encoding.TextUnmarshaler
//	}
//	var cfg struct {
//		Links []Link `yaml:"links"`
//	}
//	if err := strictyaml.Decode(data, &cfg); err != nil {
//		// err is a strictyaml.Errors; printed, each problem is one line:
//		//   links[1].delay: "10 ms": want a duration like 10ms (line 7)
//		//   links[2].colour: unknown field (line 9)
//		return err
//	}
//
// Types that need to look at the node itself, such as a value that may be
// written either as a scalar or as a mapping, implement [Unmarshaler] and use
// the [Decoder] they are given so that their errors carry the right path.
package strictyaml

import (
	"bytes"
	"encoding"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// Error is one problem found in a document.
type Error struct {
	Path  string // e.g. "links[1].delay"; "" for the document root
	Line  int    // 1-based line of the offending node, 0 if unknown
	Value string // the scalar as written, if the node was a scalar, else ""
	Msg   string // e.g. "want a duration like 10ms"

	// scalar distinguishes an empty scalar (worth showing as "") from a
	// non-scalar node, which has no text to show.
	scalar bool
}

// Error formats e as `PATH: "VALUE": MSG (line N)`, leaving out the parts
// that are unknown.
func (e *Error) Error() string {
	if e == nil {
		return "<nil>"
	}
	var b strings.Builder
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	if e.Value != "" || e.scalar {
		b.WriteString(strconv.Quote(e.Value))
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	if e.Line != 0 {
		b.WriteString(" (line ")
		b.WriteString(strconv.Itoa(e.Line))
		b.WriteString(")")
	}
	return b.String()
}

// Errors is every problem found in a document, sorted by line then path.
type Errors []*Error

// Error puts one problem per line.
func (e Errors) Error() string {
	lines := make([]string, len(e))
	for i, err := range e {
		lines[i] = err.Error()
	}
	return strings.Join(lines, "\n")
}

// Unmarshaler is implemented by types that decode themselves from a node,
// e.g. a value that may be written either as a scalar or as a mapping
// {ab: ..., ba: ...}. A non-nil returned error is recorded at the current
// path as if by d.Errorf(n, "%v", err); errors in children should instead be
// left to d.Decode and d.DecodeField so that they carry their own path.
type Unmarshaler interface {
	UnmarshalYAMLNode(d *Decoder, n *yaml.Node) error
}

// Limits that keep hostile input (alias bombs, self-referencing anchors,
// runaway Unmarshalers) from exhausting memory or stack. They are far beyond
// anything a hand-written config needs.
const (
	// Aliases may make the decoder visit this many nodes per node in the
	// document, plus aliasSlack, before it gives up.
	aliasFactor = 10
	aliasSlack  = 10000
	// The parser already stops at 10000 levels; aliases and Unmarshalers can
	// add to that, so leave headroom without risking the goroutine stack.
	maxDepth = 50000
)

// Decoder carries the current path and the error list through one call to
// [Decode]; an [Unmarshaler] uses it to decode its children.
type Decoder struct {
	// path is where the node being decoded is, written out only when an
	// error or Path asks: a string per level, each its parent's and one
	// more step, would cost memory in the square of the depth.
	path []step
	errs Errors

	structs map[reflect.Type]*structInfo
	// expanding holds the anchors whose aliases are being decoded, to catch
	// anchors that contain an alias to themselves.
	expanding map[*yaml.Node]bool
	visits    int
	maxVisits int
	depth     int
	aborted   bool
}

func newDecoder(maxVisits int) *Decoder {
	return &Decoder{
		structs:   make(map[reflect.Type]*structInfo),
		expanding: make(map[*yaml.Node]bool),
		maxVisits: maxVisits,
	}
}

// Decode parses data (one YAML document) into v, which must be a non-nil
// pointer. Unknown keys, duplicate keys, type mismatches and scalar parse
// errors are all errors; decoding continues after an error so that every
// problem is reported at once. The returned error is nil or an [Errors] value
// (a list of *[Error], sorted by line then path).
//
// Keys absent from the document, and keys whose value is null, leave the
// corresponding Go value as it was, so defaults can be filled in before
// calling Decode; a null does set pointers, maps, slices and interfaces to nil.
func Decode(data []byte, v any) (err error) {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return Errors{{Msg: fmt.Sprintf("strictyaml: Decode needs a non-nil pointer, got %T", v)}}
	}
	d := newDecoder(0)
	// Not a substitute for handling input correctly: a bug here or in the
	// parser must surface as an error the operator can report, not take the
	// daemon down while it reloads its config.
	defer func() {
		if r := recover(); r != nil {
			d.errs = append(d.errs, &Error{Msg: fmt.Sprintf("strictyaml: internal error: %v", r)})
			err = d.result()
		}
	}()
	root, perr := parseOne(data)
	if perr != nil {
		return Errors{perr}
	}
	if root == nil {
		return nil
	}
	d.maxVisits = aliasFactor*countNodes(root, 0) + aliasSlack
	d.decode(root, rv.Elem())
	return d.result()
}

func (d *Decoder) result() error {
	if len(d.errs) == 0 {
		return nil
	}
	sort.SliceStable(d.errs, func(i, j int) bool {
		a, b := d.errs[i], d.errs[j]
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Path < b.Path
	})
	return d.errs
}

// parseOne returns the single document in data, nil for a document that is
// empty or only comments, or the error to report.
func parseOne(data []byte) (*yaml.Node, *Error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, syntaxError(err, data)
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
		return &doc, nil
	case err != nil:
		return nil, syntaxError(err, data)
	default:
		return nil, &Error{Line: next.Line, Msg: "want one YAML document"}
	}
}

// syntaxError lifts the line number out of messages like
// "yaml: line 3: mapping values are not allowed in this context" so that
// syntax errors read like every other error, and puts right what yaml.v3
// gets wrong: it counts its parser's lines (not its scanner's) from 0,
// leaves out line numbers that come out as 0, and gives none for unknown
// anchors and for bytes that are not text, which are found in data instead.
func syntaxError(err error, data []byte) *Error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if num, text, ok := strings.Cut(rest, ": "); ok {
			if n, err := strconv.Atoi(num); err == nil && n > 0 {
				line, msg = n, text
			}
		}
	}
	switch {
	case parserProblems[msg]:
		line++
	case readerProblems[msg]:
		line = badCharLine(data)
	case strings.HasPrefix(msg, "unknown anchor '") && strings.HasSuffix(msg, "' referenced"):
		line = aliasLine(data, strings.TrimSuffix(strings.TrimPrefix(msg, "unknown anchor '"), "' referenced"))
	case line == 0:
		line = 1 // a scanner error on the first line
	}
	return &Error{Line: line, Msg: msg}
}

// parserProblems are the messages of yaml.v3's parser, whose lines it
// reports counted from 0; its scanner's are counted from 1.
var parserProblems = map[string]bool{
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"did not find expected '-' indicator":    true,
	"did not find expected <document start>": true,
	"did not find expected <stream-start>":   true,
	"did not find expected key":              true,
	"did not find expected node content":     true,
	"found duplicate %TAG directive":         true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found undefined tag handle":             true,
}

// readerProblems are yaml.v3's messages for bytes that are not YAML text,
// which it reports without a line.
var readerProblems = map[string]bool{
	"control characters are not allowed": true,
	"incomplete UTF-8 octet sequence":    true,
	"invalid Unicode character":          true,
	"invalid leading UTF-8 octet":        true,
	"invalid length of a UTF-8 sequence": true,
	"invalid trailing UTF-8 octet":       true,
}

// badCharLine returns the line of the first character in data that YAML
// does not allow, 0 if there is none or data is UTF-16.
func badCharLine(data []byte) int {
	if bytes.HasPrefix(data, []byte{0xfe, 0xff}) || bytes.HasPrefix(data, []byte{0xff, 0xfe}) {
		return 0
	}
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && size <= 1 || !yamlChar(r) {
			return lineAt(data, i)
		}
		i += size
	}
	return 0
}

// yamlChar reports whether YAML allows r in a document (YAML 1.2 §5.1).
func yamlChar(r rune) bool {
	switch {
	case r == '\t', r == '\n', r == '\r', r >= 0x20 && r <= 0x7e, r == 0x85:
	case r >= 0xa0 && r <= 0xd7ff, r >= 0xe000 && r <= 0xfffd, r >= 0x10000 && r <= 0x10ffff:
	default:
		return false
	}
	return true
}

// aliasLine returns the line of the first alias *name in data, 0 if there
// is none. It does not parse data: text like an alias inside a quoted
// scalar or a comment earlier in the document would be taken for it.
func aliasLine(data []byte, name string) int {
	alias := []byte("*" + name)
	for i := 0; ; {
		j := bytes.Index(data[i:], alias)
		if j < 0 {
			return 0
		}
		start, end := i+j, i+j+len(alias)
		before := start == 0 || bytes.IndexByte([]byte(" \t\r\n[{,?:"), data[start-1]) >= 0
		// What ends an anchor name in yaml.v3's scanner: a blank, or
		// one of ?:,]}%@` (so "*a: 1", an alias as a key, too).
		after := end == len(data) || bytes.IndexByte([]byte(" \t\r\n\x00]},?:%@`"), data[end]) >= 0
		if before && after {
			return lineAt(data, start)
		}
		i = start + 1
	}
}

// lineAt returns the 1-based line of the byte at offset in data.
func lineAt(data []byte, offset int) int {
	line := 1
	for i, c := range data[:offset] {
		if c == '\n' || c == '\r' && (i+1 == len(data) || data[i+1] != '\n') {
			line++
		}
	}
	return line
}

// Locate gives each error in errs that has no line the line of what its
// Path names in data, or of the nearest enclosing part of the document
// when the path leads to something absent (a missing key). It is for the
// errors of checks made after [Decode] succeeded on data.
func Locate(data []byte, errs Errors) {
	root, perr := parseOne(data)
	if perr != nil || root == nil {
		return
	}
	for _, e := range errs {
		if e != nil && e.Line == 0 {
			e.Line = locate(root, e.Path)
		}
	}
}

// locate returns the line of the node path names under root, or of its
// nearest ancestor that the document has; 0 for the root itself.
func locate(root *yaml.Node, path string) int {
	n, line := root, 0
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	for path != "" && n != nil {
		var key string
		index := -1
		switch {
		case strings.HasPrefix(path, "[\""):
			q, err := strconv.QuotedPrefix(path[1:])
			if err != nil || !strings.HasPrefix(path[1+len(q):], "]") {
				return line
			}
			key, _ = strconv.Unquote(q)
			path = path[1+len(q)+1:]
		case strings.HasPrefix(path, "["):
			end := strings.IndexByte(path, ']')
			i, err := strconv.Atoi(path[1:max(end, 1)])
			if end < 0 || err != nil {
				return line
			}
			index, path = i, path[end+1:]
		default:
			end := strings.IndexAny(path, ".[")
			if end < 0 {
				end = len(path)
			}
			key, path = path[:end], path[end:]
		}
		path = strings.TrimPrefix(path, ".")
		n = resolveAlias(n)
		switch {
		case n == nil:
			return line
		case index >= 0:
			if n.Kind != yaml.SequenceNode || index >= len(n.Content) {
				return line
			}
			n = n.Content[index]
			line = n.Line
		default:
			if n.Kind != yaml.MappingNode {
				return line
			}
			var next *yaml.Node
			for i := 0; i+1 < len(n.Content); i += 2 {
				if k := resolveAlias(n.Content[i]); k != nil && k.Kind == yaml.ScalarNode && k.Value == key {
					next, line = n.Content[i+1], n.Content[i].Line
					break
				}
			}
			if next == nil {
				return line
			}
			n = next
		}
	}
	return line
}

// countNodes sizes the document without following aliases, as the baseline
// for how much alias expansion to allow.
func countNodes(n *yaml.Node, depth int) int {
	if n == nil || depth > maxDepth {
		return 0
	}
	c := 1
	for _, child := range n.Content {
		c += countNodes(child, depth+1)
	}
	return c
}

// step is one level of a path: a mapping key, or a list index.
type step struct {
	key   string
	index int // -1 for a key
}

// Path returns the path of the node being decoded, "" at the document root.
func (d *Decoder) Path() string {
	var b strings.Builder
	for _, s := range d.path {
		switch {
		case s.index >= 0:
			b.WriteString("[" + strconv.Itoa(s.index) + "]")
		case !isIdent(s.key):
			b.WriteString("[" + strconv.Quote(s.key) + "]") // as joinKey does
		default:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(s.key)
		}
	}
	return b.String()
}

func (d *Decoder) push(s step) { d.path = append(d.path, s) }
func (d *Decoder) pop()        { d.path = d.path[:len(d.path)-1] }

// Decode decodes n into v at the current path; v must be a non-nil pointer.
func (d *Decoder) Decode(n *yaml.Node, v any) {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		d.Errorf(n, "strictyaml: Decoder.Decode needs a non-nil pointer, got %T", v)
		return
	}
	d.decode(n, rv.Elem())
}

// DecodeField decodes n into v at the current path extended by the key name.
func (d *Decoder) DecodeField(name string, n *yaml.Node, v any) {
	d.push(step{key: name, index: -1})
	d.Decode(n, v)
	d.pop()
}

// Errorf records an error at the current path and at the line and value of n,
// which may be nil.
func (d *Decoder) Errorf(n *yaml.Node, format string, args ...any) {
	d.addError(d.Path(), n, true, fmt.Sprintf(format, args...))
}

// addError records msg at path; withValue says whether n's text belongs in
// the message (it does not for problems with a key, which the path names).
func (d *Decoder) addError(path string, n *yaml.Node, withValue bool, msg string) {
	e := &Error{Path: path, Msg: msg}
	if n != nil {
		e.Line = n.Line
		if r := resolveAlias(n); withValue && r != nil && r.Kind == yaml.ScalarNode {
			e.Value = r.Value
			e.scalar = true
		}
	}
	d.errs = append(d.errs, e)
}

// resolveAlias follows n to the node it stands for, or returns nil for an
// alias that leads nowhere. The step limit guards hand-built alias cycles.
func resolveAlias(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode; i++ {
		if i > 100 {
			return nil
		}
		n = n.Alias
	}
	return n
}

// joinKey extends path by a mapping key, quoting keys that would make the
// path ambiguous.
func joinKey(path, key string) string {
	if !isIdent(key) {
		return path + "[" + strconv.Quote(key) + "]"
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_':
		case i > 0 && (c >= '0' && c <= '9' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// decode is the single entry point for every node, so that the limits and
// alias handling apply no matter who asks for the node to be decoded.
func (d *Decoder) decode(n *yaml.Node, v reflect.Value) {
	if d.aborted || n == nil {
		return
	}
	d.visits++
	if d.maxVisits > 0 && d.visits > d.maxVisits {
		d.aborted = true
		d.Errorf(n, "document is too large once aliases are expanded")
		return
	}
	if d.depth >= maxDepth {
		d.aborted = true
		d.Errorf(n, "document is nested too deeply")
		return
	}
	d.depth++
	defer func() { d.depth-- }()

	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) > 0 {
			d.decode(n.Content[0], v)
		}
	case yaml.AliasNode:
		target := n.Alias
		if target == nil {
			d.Errorf(n, "alias *%s refers to nothing", n.Value)
			return
		}
		if d.expanding[target] {
			d.Errorf(n, "alias *%s refers to a node that contains it", n.Value)
			return
		}
		d.expanding[target] = true
		d.decode(target, v)
		delete(d.expanding, target)
	default:
		d.value(n, v)
	}
}

// value decodes n, which is not an alias or document, into the settable v.
func (d *Decoder) value(n *yaml.Node, v reflect.Value) {
	if n.Kind == yaml.ScalarNode && n.Style&yaml.TaggedStyle != 0 && n.ShortTag() == "!!null" && !isNullWord(n.Value) {
		// Taken for a null, "x" in "!!null x" would be dropped unseen.
		d.Errorf(n, "want null, ~ or nothing for a value tagged !!null")
		return
	}
	null := isNull(n)
	for levels := 0; v.Kind() == reflect.Pointer; levels++ {
		if levels > 100 {
			// Only a type like "type P *P" gets here.
			d.Errorf(n, "strictyaml: cannot decode into Go type %s", v.Type())
			return
		}
		if null {
			v.SetZero()
			return
		}
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		v = v.Elem()
	}

	if v.CanAddr() && v.Addr().CanInterface() {
		switch u := v.Addr().Interface().(type) {
		case Unmarshaler:
			if err := u.UnmarshalYAMLNode(d, n); err != nil {
				d.Errorf(n, "%v", err)
			}
			return
		case encoding.TextUnmarshaler:
			if null {
				return
			}
			if n.Kind != yaml.ScalarNode {
				d.Errorf(n, "want a scalar, got %s", kindName(n))
				return
			}
			if err := u.UnmarshalText([]byte(n.Value)); err != nil {
				d.Errorf(n, "%s", err.Error())
			}
			return
		}
	}

	switch v.Kind() {
	case reflect.Interface:
		if v.NumMethod() != 0 {
			d.Errorf(n, "strictyaml: cannot decode into Go type %s", v.Type())
			return
		}
		d.plain(n, v)
	case reflect.Struct:
		if null {
			return
		}
		if n.Kind != yaml.MappingNode {
			d.Errorf(n, "want a mapping, got %s", kindName(n))
			return
		}
		d.structValue(n, v)
	case reflect.Map:
		if null {
			v.SetZero()
			return
		}
		if n.Kind != yaml.MappingNode {
			d.Errorf(n, "want a mapping, got %s", kindName(n))
			return
		}
		d.mapValue(n, v)
	case reflect.Slice:
		if null {
			v.SetZero()
			return
		}
		if n.Kind != yaml.SequenceNode {
			d.Errorf(n, "want a list, got %s", kindName(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		d.elements(n, s)
		v.Set(s)
	case reflect.Array:
		if null {
			return
		}
		if n.Kind != yaml.SequenceNode {
			d.Errorf(n, "want a list, got %s", kindName(n))
			return
		}
		if len(n.Content) != v.Len() {
			d.Errorf(n, "want a list of %d items, got %d", v.Len(), len(n.Content))
			return
		}
		d.elements(n, v)
	case reflect.String:
		if null {
			return
		}
		if n.Kind != yaml.ScalarNode {
			d.Errorf(n, "want a string, got %s", kindName(n))
			return
		}
		if why := mistyped(n, "!!str"); why != "" {
			d.Errorf(n, "want a string, not a value %s", why)
			return
		}
		v.SetString(n.Value)
	case reflect.Bool:
		if null {
			return
		}
		if n.Kind != yaml.ScalarNode {
			d.Errorf(n, "want true or false, got %s", kindName(n))
			return
		}
		if why := mistyped(n, "!!bool"); why != "" {
			d.Errorf(n, "want true or false, not a value %s", why)
			return
		}
		b, ok := parseBool(n.Value)
		if !ok {
			d.Errorf(n, "want true or false")
			return
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		if null {
			return
		}
		if n.Kind != yaml.ScalarNode {
			d.Errorf(n, "want an integer, got %s", kindName(n))
			return
		}
		if why := mistyped(n, "!!int"); why != "" {
			d.Errorf(n, "want an integer, not a value %s", why)
			return
		}
		d.integer(n, v)
	case reflect.Float32, reflect.Float64:
		if null {
			return
		}
		if n.Kind != yaml.ScalarNode {
			d.Errorf(n, "want a number, got %s", kindName(n))
			return
		}
		if why := mistyped(n, "!!float"); why != "" {
			d.Errorf(n, "want a number, not a value %s", why)
			return
		}
		f, msg := parseFloat(n.Value, v.Type().Bits())
		if msg != "" {
			d.Errorf(n, "%s", msg)
			return
		}
		v.SetFloat(f)
	default:
		d.Errorf(n, "strictyaml: cannot decode into Go type %s", v.Type())
	}
}

// mistyped says why the scalar n cannot be read as a value of the YAML
// type want (!!str, !!bool, !!int or !!float), or "": it is quoted, so a
// string, or its explicit tag names another type. A number read from a
// string, or a string from a !!int, is the coercion this package refuses.
func mistyped(n *yaml.Node, want string) string {
	if want != "!!str" && n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 {
		return "quoted (a string)"
	}
	if n.Style&yaml.TaggedStyle != 0 && n.Tag != want && !(want == "!!float" && n.Tag == "!!int") {
		return "tagged " + n.Tag
	}
	return ""
}

func (d *Decoder) elements(n *yaml.Node, v reflect.Value) {
	for i, child := range n.Content {
		d.push(step{index: i})
		d.decode(child, v.Index(i))
		d.pop()
	}
}

func (d *Decoder) integer(n *yaml.Node, v reflect.Value) {
	neg, mag, huge, ok := parseInteger(n.Value)
	if !ok {
		d.Errorf(n, "want an integer")
		return
	}
	bits := v.Type().Bits()
	overflow := fmt.Sprintf("overflows %s", v.Kind())
	switch v.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		limit := uint64(1) << (bits - 1) // magnitude of the most negative value
		if huge || mag > limit || (!neg && mag == limit) {
			d.Errorf(n, "%s", overflow)
			return
		}
		i := int64(mag)
		if neg {
			i = int64(-mag) // two's complement, so also right for the most negative value
		}
		v.SetInt(i)
	default:
		if neg && (huge || mag != 0) {
			d.Errorf(n, "want a non-negative integer")
			return
		}
		if huge || bits < 64 && mag >= uint64(1)<<bits {
			d.Errorf(n, "%s", overflow)
			return
		}
		v.SetUint(mag)
	}
}

// plain decodes n into an interface as the plain Go values map[string]any,
// []any, string, int, float64, bool or nil.
func (d *Decoder) plain(n *yaml.Node, v reflect.Value) {
	switch n.Kind {
	case yaml.MappingNode:
		m := reflect.ValueOf(make(map[string]any, len(n.Content)/2))
		d.mapValue(n, m)
		v.Set(m)
	case yaml.SequenceNode:
		s := make([]any, len(n.Content))
		d.elements(n, reflect.ValueOf(s))
		v.Set(reflect.ValueOf(s))
	default:
		x, msg := plainScalar(n)
		if msg != "" {
			d.Errorf(n, "%s", msg)
			return
		}
		if x == nil {
			v.SetZero()
			return
		}
		v.Set(reflect.ValueOf(x))
	}
}

// mapValue decodes the mapping n into the map v, allocating it if nil.
func (d *Decoder) mapValue(n *yaml.Node, v reflect.Value) {
	t := v.Type()
	keyType, elemType := t.Key(), t.Elem()
	textKey := reflect.PointerTo(keyType).Implements(reflect.TypeFor[encoding.TextUnmarshaler]())
	if !textKey && keyType.Kind() != reflect.String {
		d.Errorf(n, "strictyaml: cannot decode into Go type %s: keys must be strings", t)
		return
	}
	if v.IsNil() {
		v.Set(reflect.MakeMapWithSize(t, len(n.Content)/2))
	}
	depth := len(d.path)
	defer func() { d.path = d.path[:depth] }()
	d.eachKey(n, func(key string, k, val *yaml.Node) {
		kv := reflect.New(keyType)
		if textKey {
			if err := kv.Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(key)); err != nil {
				d.addError(joinKey(d.Path(), key), k, true, err.Error())
				return
			}
		} else {
			kv.Elem().SetString(key)
		}
		ev := reflect.New(elemType).Elem()
		d.push(step{key: key, index: -1})
		d.decode(val, ev)
		d.pop()
		v.SetMapIndex(kv.Elem(), ev)
	})
}

// eachKey calls f for each key of the mapping n that is a scalar, not a merge
// key and not a repeat, reporting the ones that are not.
func (d *Decoder) eachKey(n *yaml.Node, f func(key string, k, val *yaml.Node)) {
	seen := make(map[string]bool, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		kr := resolveAlias(k)
		switch {
		case kr == nil || kr.Kind != yaml.ScalarNode:
			d.addError(d.Path(), k, false, "want a scalar key, got "+kindName(kr))
			continue
		case kr.ShortTag() == "!!merge":
			d.addError(d.Path(), k, true, "merge keys are not supported")
			continue
		case seen[kr.Value]:
			d.addError(joinKey(d.Path(), kr.Value), k, false, "duplicate key")
			continue
		}
		seen[kr.Value] = true
		f(kr.Value, k, val)
	}
}

func (d *Decoder) structValue(n *yaml.Node, v reflect.Value) {
	info := d.structInfo(v.Type())
	d.eachKey(n, func(key string, k, val *yaml.Node) {
		index, ok := info.fields[key]
		if !ok {
			d.addError(joinKey(d.Path(), key), k, false, "unknown field")
			return
		}
		d.push(step{key: key, index: -1})
		d.decode(val, fieldByIndex(v, index))
		d.pop()
	})
}

// fieldByIndex is reflect.Value.FieldByIndex, but allocates inlined struct
// pointers instead of panicking on them.
func fieldByIndex(v reflect.Value, index []int) reflect.Value {
	for i, x := range index {
		if i > 0 && v.Kind() == reflect.Pointer {
			if v.IsNil() {
				v.Set(reflect.New(v.Type().Elem()))
			}
			v = v.Elem()
		}
		v = v.Field(x)
	}
	return v
}

type structInfo struct {
	fields map[string][]int // key -> field index path through inlined structs
}

// structInfo describes t, reporting mistakes in its tags once per Decode
// rather than once per value.
func (d *Decoder) structInfo(t reflect.Type) *structInfo {
	if info, ok := d.structs[t]; ok {
		return info
	}
	info := &structInfo{fields: make(map[string][]int)}
	d.structs[t] = info
	var problems []string
	addFields(t, nil, info.fields, map[reflect.Type]bool{t: true}, &problems)
	for _, p := range problems {
		d.addError(d.Path(), nil, false, fmt.Sprintf("strictyaml: Go type %s: %s", t, p))
	}
	return info
}

func addFields(t reflect.Type, prefix []int, fields map[string][]int, inlining map[reflect.Type]bool, problems *[]string) {
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		tag := sf.Tag.Get("yaml")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		index := append(append([]int(nil), prefix...), i)
		if hasOption(opts, "inline") {
			ft := sf.Type
			viaPointer := ft.Kind() == reflect.Pointer
			if viaPointer {
				ft = ft.Elem()
			}
			switch {
			case ft.Kind() != reflect.Struct:
				*problems = append(*problems, fmt.Sprintf("field %s: inline needs a struct", sf.Name))
			case !sf.IsExported() && (viaPointer || !sf.Anonymous):
				// reflect cannot allocate through an unexported pointer,
				// and a named unexported field is private by intent.
				*problems = append(*problems, fmt.Sprintf("field %s: cannot inline an unexported field", sf.Name))
			case inlining[ft]:
				*problems = append(*problems, fmt.Sprintf("field %s: inlines itself", sf.Name))
			default:
				inlining[ft] = true
				addFields(ft, index, fields, inlining, problems)
				delete(inlining, ft)
			}
			continue
		}
		if !sf.IsExported() {
			continue
		}
		if name == "" {
			name = strings.ToLower(sf.Name)
		}
		if _, dup := fields[name]; dup {
			*problems = append(*problems, fmt.Sprintf("two fields use the key %q", name))
			continue
		}
		fields[name] = index
	}
}

func hasOption(opts, want string) bool {
	for opts != "" {
		var o string
		o, opts, _ = strings.Cut(opts, ",")
		if o == want {
			return true
		}
	}
	return false
}

func kindName(n *yaml.Node) string {
	if n == nil {
		return "nothing"
	}
	switch n.Kind {
	case yaml.ScalarNode:
		return "a scalar"
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	default:
		return "a document"
	}
}

const quotedStyles = yaml.DoubleQuotedStyle | yaml.SingleQuotedStyle | yaml.LiteralStyle | yaml.FoldedStyle

// isNull reports whether n is a YAML null: an explicit !!null tag, or a
// plain ~, null or nothing at all. (value refuses a !!null tag on anything
// else.)
func isNull(n *yaml.Node) bool {
	if n.Kind != yaml.ScalarNode {
		return false
	}
	if n.Style&yaml.TaggedStyle != 0 {
		return n.ShortTag() == "!!null"
	}
	return n.Style&quotedStyles == 0 && isNullWord(n.Value)
}

func isNullWord(s string) bool {
	switch s {
	case "", "~", "null", "Null", "NULL":
		return true
	}
	return false
}

// parseBool follows the YAML 1.2 core schema: yes/no/on/off are exactly the
// values that surprise operators, so they are not booleans.
func parseBool(s string) (value, ok bool) {
	switch s {
	case "true", "True", "TRUE":
		return true, true
	case "false", "False", "FALSE":
		return false, true
	}
	return false, false
}

// plainScalar types a scalar for an interface target by the YAML 1.2 core
// schema. yaml.v3's own resolver is not used because it also accepts YAML
// 1.1 forms (0777 as octal, 1_000, 0b101) that typed targets reject here.
func plainScalar(n *yaml.Node) (any, string) {
	tag := ""
	switch {
	case n.Style&yaml.TaggedStyle != 0:
		tag = n.ShortTag()
	case n.Style&quotedStyles != 0:
		return n.Value, ""
	}
	s := n.Value
	switch tag {
	case "":
		if isNullWord(s) {
			return nil, ""
		}
		if b, ok := parseBool(s); ok {
			return b, ""
		}
		if neg, mag, huge, ok := parseInteger(s); ok {
			return plainInt(neg, mag, huge)
		}
		if _, ok := specialFloat(s); ok || isYAMLFloat(s) {
			return parseFloat(s, 64)
		}
		return s, ""
	case "!!null":
		return nil, ""
	case "!!bool":
		if b, ok := parseBool(s); ok {
			return b, ""
		}
		return nil, "want true or false"
	case "!!int":
		neg, mag, huge, ok := parseInteger(s)
		if !ok {
			return nil, "want an integer"
		}
		return plainInt(neg, mag, huge)
	case "!!float":
		return parseFloat(s, 64)
	}
	return s, ""
}

func plainInt(neg bool, mag uint64, huge bool) (any, string) {
	limit := uint64(1) << (strconv.IntSize - 1)
	if huge || mag > limit || (!neg && mag == limit) {
		return nil, "overflows int"
	}
	if neg {
		return int(-mag), ""
	}
	return int(mag), ""
}

// parseInteger accepts the YAML 1.2 core integer forms: decimal, 0x hex and
// 0o octal, each with an optional sign. It returns sign and magnitude rather
// than a value so that each caller can range-check for its own type; huge
// means the magnitude does not even fit in a uint64.
func parseInteger(s string) (neg bool, mag uint64, huge, ok bool) {
	digits := s
	if digits != "" && (digits[0] == '+' || digits[0] == '-') {
		neg = digits[0] == '-'
		digits = digits[1:]
	}
	base := 10
	switch {
	case strings.HasPrefix(digits, "0x"):
		base, digits = 16, digits[2:]
	case strings.HasPrefix(digits, "0o"):
		base, digits = 8, digits[2:]
	}
	if digits == "" {
		return false, 0, false, false
	}
	for _, c := range digits {
		ok := c >= '0' && c <= '9' && int(c-'0') < base ||
			base == 16 && (c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F')
		if !ok {
			return false, 0, false, false
		}
	}
	mag, err := strconv.ParseUint(digits, base, 64)
	// The digits were checked above, so the only possible failure is range.
	return neg, mag, err != nil, true
}

// parseFloat accepts the YAML 1.2 core float forms, plus the integer forms,
// but not the extras strconv allows (inf, nan, hex floats, underscores),
// which would make the same file mean different things to other tools.
func parseFloat(s string, bits int) (float64, string) {
	if f, ok := specialFloat(s); ok {
		return f, ""
	}
	if isYAMLFloat(s) {
		f, err := strconv.ParseFloat(s, bits)
		if err != nil {
			return 0, fmt.Sprintf("overflows float%d", bits)
		}
		return f, ""
	}
	neg, mag, huge, ok := parseInteger(s)
	if !ok {
		return 0, "want a number"
	}
	if huge {
		// Only hex and octal get here, as huge decimals pass isYAMLFloat.
		return 0, fmt.Sprintf("overflows float%d", bits)
	}
	f := float64(mag)
	if neg {
		f = -f
	}
	return f, ""
}

func specialFloat(s string) (float64, bool) {
	switch s {
	case ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF":
		return math.Inf(1), true
	case "-.inf", "-.Inf", "-.INF":
		return math.Inf(-1), true
	case ".nan", ".NaN", ".NAN":
		return math.NaN(), true
	}
	return 0, false
}

// isYAMLFloat matches [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?
func isYAMLFloat(s string) bool {
	i := 0
	digits := func() int {
		start := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		return i - start
	}
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		i++
	}
	if i < len(s) && s[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	} else {
		if digits() == 0 {
			return false
		}
		if i < len(s) && s[i] == '.' {
			i++
			digits()
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(s)
}
