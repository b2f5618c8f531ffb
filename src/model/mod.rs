//! Models: the ResNet family as a layer list (more to come: layers, checkpoints).

pub mod arch;
