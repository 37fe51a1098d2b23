"""Privacy against attackers that read the whole sequence (issue 20): see docs/frontier.md."""
