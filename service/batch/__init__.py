"""Offline batch scoring (python -m service.batch): command line, job, resumable state, running and progress."""
