//go:build !linux

package testserver

import "syscall"

func setParentDeathSignal(*syscall.SysProcAttr) {}
