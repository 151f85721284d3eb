package metrics

import (
	"runtime"
	"sync"
	"time"
)

// RegisterProcess adds the usual process and Go runtime families:
// process_* (resident and virtual memory, CPU seconds, descriptors, start
// time; Linux) and go_goroutines, go_memstats_heap_inuse_bytes,
// go_gc_cycles_total. They are read at scrape time.
func RegisterProcess(r *Registry) {
	start := float64(time.Now().UnixNano()) / 1e9
	r.Func("go_goroutines", "Goroutines that currently exist.", GaugeType, nil, func(emit func(float64, ...string)) {
		emit(float64(runtime.NumGoroutine()))
	})
	// One ReadMemStats (it stops the world) serves a scrape's families:
	// a reading younger than a second is reused.
	var (
		mu   sync.Mutex
		ms   runtime.MemStats
		when time.Time
	)
	readMem := func() runtime.MemStats {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(when) > time.Second {
			runtime.ReadMemStats(&ms)
			when = time.Now()
		}
		return ms
	}
	r.Func("go_memstats_heap_inuse_bytes", "Bytes in in-use heap spans.", GaugeType, nil, func(emit func(float64, ...string)) {
		emit(float64(readMem().HeapInuse))
	})
	r.Func("go_memstats_sys_bytes", "Bytes of memory obtained from the OS by the Go runtime.", GaugeType, nil, func(emit func(float64, ...string)) {
		emit(float64(readMem().Sys))
	})
	r.Func("go_gc_cycles_total", "Completed garbage collection cycles.", CounterType, nil, func(emit func(float64, ...string)) {
		emit(float64(readMem().NumGC))
	})
	r.Func("process_start_time_seconds", "Start time of the process since the Unix epoch, in seconds (when metrics were set up).", GaugeType, nil, func(emit func(float64, ...string)) {
		emit(start)
	})
	registerProcessOS(r)
}
