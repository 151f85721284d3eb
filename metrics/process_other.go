//go:build !linux

package metrics

func registerProcessOS(*Registry) {}
