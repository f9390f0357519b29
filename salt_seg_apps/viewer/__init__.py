"""The clinician-facing viewer (``salt-seg app``): open NIfTI/DICOM volumes, segment with clicks, propagate, export.

Layers, each importable without the next:

========================  ==================================================================================
:mod:`.render`            slice -> picture: window/level, aspect, overlays, prompt markers, orientation letters
:mod:`.state`             labels, placed prompts, per-slice undo (plain classes)
:mod:`.engine`            models: the app-wide registry and a session's engine (cache, background prefetch)
:mod:`.session`           one tab's volume, view, label map and editing actions
:mod:`.actions`           volume-wide actions through the library (auto, propagate, export, prompt files)
:mod:`.uploads`           uploaded files -> a volume, with size and path checks and a DICOM series picker
:mod:`.handlers`          UI events -> session calls -> named updates (unit-tested directly)
:mod:`.sessions`          per-tab sessions, freed by memory budget and idle time, least recently used first
:mod:`.guard`             server-issued session secrets, session hashes bound to them, uploads never served
:mod:`.page`              the page's hover script and CSS
:mod:`.app`               the Gradio page, its wiring, safe launch defaults
========================  ==================================================================================
"""

from __future__ import annotations
