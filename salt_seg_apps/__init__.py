"""Applications built on the salt_seg library (the viewer); of the library only ``salt_seg.commands.app`` imports them."""
