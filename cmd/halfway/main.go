// Command halfway makes TCP faster by splitting connections at relays placed
// part-way along their path. This binary holds every part of it:
//
//	halfway relay -c FILE        run a split-TCP relay
//	halfway relay rules -c FILE  print a relay's capture rules
//	halfway lab up FILE          bring up an emulated WAN in network namespaces
//	halfway lab exec NODE -- CMD run a command on a lab host
//	halfway lab status           show labs, addresses and link counters
//	halfway lab down [FILE|NAME] remove a lab (all labs without an argument)
//	halfway bench lab            measure how faithful the lab's links are
//	halfway bench accel          reproduce the acceleration figures
//	halfway bench mptcp          measure MPTCP-to-TCP conversion
//	halfway bench peers          compare with HAProxy, nginx and socat
//	halfway bench footprint      measure a relay's memory and start time
//	halfway model -f TOPOLOGY    predict TTFB and TTC (Miniproxy's model)
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

const usage = `usage: halfway COMMAND [ARGS]

commands:
  relay -c FILE [--check]            run a relay (SIGHUP reloads, SIGTERM drains)
  relay rules -c FILE                print the capture rules of transparent listeners
  lab up [--foreground] FILE         bring up a lab topology (YAML)
  lab exec [--lab NAME] NODE -- CMD  run CMD inside a lab host
  lab status [--json] [NAME]         show labs, hosts, links and counters
  lab down [FILE|NAME]               remove a lab, or every lab
  bench lab [--json] [--out DIR]     measure the lab's RTT, rate and loss accuracy
  bench accel [--parts ...]          early SYN, pools, Turbo-Start: Miniproxy Figs. 4-5, KTCP Figs. 3-4
  bench mptcp [--parts ...]          MPTCP to TCP conversion: MiMBox goodput, buffers, delay, path loss
  bench peers [--peers ...]          halfway against HAProxy, nginx and socat: bytes, connections, latency, memory
  bench footprint [--flows 9000]     a relay's idle RSS, memory per flow, start time
  model -f TOPOLOGY [--sizes ...]    predicted TTFB and TTC (Miniproxy model) per configuration

Run 'halfway COMMAND -h' for a command's flags.
`

// errUsage marks a command-line mistake: usage is printed, exit status 2.
var errUsage = errors.New("usage")

func main() {
	err := run(os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
	case errors.Is(err, errUsage):
		fmt.Fprintf(os.Stderr, "halfway: %v\n", err)
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "halfway: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: no command", errUsage)
	}
	switch args[0] {
	case "lab":
		return runLab(args[1:], stdout, stderr)
	case "bench":
		return runBench(args[1:], stdout, stderr)
	case "relay":
		return runRelay(args[1:], stdout, stderr)
	case "model":
		return runModel(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("%w: unknown command %q", errUsage, args[0])
}

// isHelp tells whether arg asks a command with subcommands for help.
func isHelp(arg string) bool {
	return arg == "-h" || arg == "-help" || arg == "--help" || arg == "help"
}

// subcommandHelp prints the lines of usage for command's subcommands.
func subcommandHelp(w io.Writer, command string) {
	fmt.Fprintf(w, "usage: halfway %s SUBCOMMAND [ARGS]\n\n", command)
	for _, line := range strings.Split(usage, "\n") {
		if strings.HasPrefix(line, "  "+command+" ") {
			fmt.Fprintln(w, line)
		}
	}
	fmt.Fprintf(w, "\nRun 'halfway %s SUBCOMMAND -h' for its flags.\n", command)
}

// newFlags returns a flag set that reports errors instead of exiting.
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseFlags parses a command's flags and takes at most maxArgs
// arguments after them. Go's flag package stops at the first argument, so
// a flag after one would be ignored silently: that, and a flag it cannot
// parse, are usage errors (exit status 2). -h stays ErrHelp.
func parseFlags(fs *flag.FlagSet, args []string, maxArgs int) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %s: %v", errUsage, fs.Name(), err)
	}
	if fs.NArg() > maxArgs {
		extra := fs.Arg(maxArgs)
		if strings.HasPrefix(extra, "-") {
			return fmt.Errorf("%w: %s: flag %s after an argument: flags go first", errUsage, fs.Name(), extra)
		}
		return fmt.Errorf("%w: %s: unexpected argument %q", errUsage, fs.Name(), extra)
	}
	return nil
}
