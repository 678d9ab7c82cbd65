package node

import "syscall"

func syscallMount(dir, opts string) error { return syscall.Mount("tmpfs", dir, "tmpfs", 0, opts) }
func syscallUnmount(dir string)           { _ = syscall.Unmount(dir, syscall.MNT_DETACH) }
