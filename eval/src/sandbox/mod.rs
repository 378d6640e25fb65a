//! A sandbox for untrusted Python: limits, no network, the whole process group killed.
