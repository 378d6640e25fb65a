//! HumanEval and MBPP: programs from responses, run in the sandbox, and pass@k.
