//! graygate's verdict evaluation, kept out of the product library: the real labelled changes in
//! `../shared/data` judged beside the reference judges, cross-validated (`real`), and the
//! synthetic labelled cases of the regression suite (`synthetic`).
#![forbid(unsafe_code)]

pub mod real;
pub mod synthetic;
pub mod targets;
