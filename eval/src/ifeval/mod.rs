//! IFEval: the 25 instruction checks of Google's IFEval, strict and loose, as lm-eval scores them.
