//! Models: the ResNet family as a layer list (`arch`, which the memory planner sizes) and
//! as a network on any backend (`resnet`), with torchvision's parameter names
//! (`weights` reads and writes them as safetensors).

pub mod arch;
pub mod resnet;
pub mod weights;
