"""Where frames come from: a live process, the whole host, a memory image, a guest's own
view (dedupx-agent's file or the QEMU guest agent), or a saved capture (``load``)."""
