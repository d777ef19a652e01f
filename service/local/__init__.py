"""The stack on one machine: child processes, the embedded Redis, the whole stack, the demo."""
