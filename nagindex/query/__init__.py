"""Query: target -> profile -> score -> select -> write."""
