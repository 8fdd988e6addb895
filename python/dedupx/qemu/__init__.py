"""QEMU/KVM guests: finding them, reading their configuration, mapping guest memory."""
