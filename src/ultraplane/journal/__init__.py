"""Durable, ordered logs of opaque records: the store's only source of durability."""

from ultraplane.journal.base import Journal, Recovery
from ultraplane.journal.file import FileJournal, JournalClosed, JournalCorrupt, JournalError, JournalLocked

__all__ = [
    "FileJournal",
    "Journal",
    "JournalClosed",
    "JournalCorrupt",
    "JournalError",
    "JournalLocked",
    "Recovery",
]
