"""The behaviour log: events, their vocabulary, parsing, ordering rules and files."""
