//! Models: the ResNet family as a layer list (`arch`), the memory a training step of it
//! needs (`footprint`, planned from that list before anything runs), the network on any
//! backend (`resnet`), with torchvision's parameter names (`weights` reads and writes
//! them as safetensors).

pub mod arch;
pub mod footprint;
pub mod mtcnn;
pub mod resnet;
pub mod weights;
