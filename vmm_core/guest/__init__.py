"""Guest-side artifacts: kernel, initramfs, base image, and the guest init that runs inside."""
