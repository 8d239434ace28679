"""Intake: tus uploads, upload state, completion, and the one link to the farm broker."""
