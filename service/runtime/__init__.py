"""What runs a job on Ray: launcher, supervisor, grow commands, generations, tracking, serving."""
