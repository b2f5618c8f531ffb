//! Named tensors in safetensors files, in PyTorch's layout: a checkpoint dfengine writes
//! loads in PyTorch (`safetensors.torch.load_file` → `load_state_dict`), and a torchvision
//! ResNet state dict saved as safetensors loads here as `pretrained`.
//!
//! dfengine keeps conv weights as KRSC (the layout its NHWC kernels read); PyTorch's is
//! OIHW = KCRS. Rank-4 tensors are permuted on the way in and out; everything else is
//! stored as is. Files are f32; f16 and bf16 files are read too.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::resnet::ResNet;
use crate::backend::OpError;
use crate::backend::ops::Backend;
use crate::tensor::{Shape, Tensor};

/// A tensor in host memory in PyTorch's layout.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("{path}: tensor `{name}`: {detail}")]
    Tensor { path: PathBuf, name: String, detail: String },
    #[error(transparent)]
    Op(#[from] OpError),
}

/// A rank-4 tensor transposed so that output axis `a` is input axis `axes[a]`.
fn transpose4(dims: [usize; 4], data: &[f32], axes: [usize; 4]) -> HostTensor {
    let strides = [dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1];
    let out_dims = axes.map(|a| dims[a]);
    let mut out = Vec::with_capacity(data.len());
    for i0 in 0..out_dims[0] {
        for i1 in 0..out_dims[1] {
            for i2 in 0..out_dims[2] {
                for i3 in 0..out_dims[3] {
                    let at = [i0, i1, i2, i3];
                    out.push(data[(0..4).map(|a| at[a] * strides[axes[a]]).sum::<usize>()]);
                }
            }
        }
    }
    HostTensor { dims: out_dims.to_vec(), data: out }
}

/// KRSC → KCRS for rank-4 tensors; others unchanged.
pub fn to_torch_layout(dims: &[usize], data: &[f32]) -> HostTensor {
    match dims {
        &[k, r, s, c] => transpose4([k, r, s, c], data, [0, 3, 1, 2]),
        _ => HostTensor { dims: dims.to_vec(), data: data.to_vec() },
    }
}

/// KCRS → KRSC for rank-4 tensors; others unchanged.
pub fn from_torch_layout(t: &HostTensor) -> HostTensor {
    match t.dims.as_slice() {
        &[k, c, r, s] => transpose4([k, c, r, s], &t.data, [0, 2, 3, 1]),
        _ => t.clone(),
    }
}

/// Writes `tensors` (PyTorch layout) and `metadata` to `path` atomically: a temporary file
/// beside it, flushed to disk, then renamed over `path`. A crash leaves the old file or
/// the new one, never half of one.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, HostTensor>,
    metadata: HashMap<String, String>,
) -> Result<(), WeightsError> {
    let io = |e: std::io::Error| WeightsError::File { path: path.to_path_buf(), detail: e.to_string() };
    let bytes: BTreeMap<&str, Vec<u8>> = tensors
        .iter()
        .map(|(name, t)| (name.as_str(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views = tensors
        .iter()
        .map(|(name, t)| {
            TensorView::new(Dtype::F32, t.dims.clone(), &bytes[name.as_str()]).map(|v| (name.as_str(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WeightsError::File { path: path.to_path_buf(), detail: e.to_string() })?;
    let buf = safetensors::serialize(views, Some(metadata))
        .map_err(|e| WeightsError::File { path: path.to_path_buf(), detail: e.to_string() })?;
    let tmp = path.with_extension("safetensors.partial");
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(&buf).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    fs::rename(&tmp, path).map_err(io)
}

/// A safetensors file read whole: tensors as f32 in the file's (PyTorch) layout.
#[derive(Debug, Clone, Default)]
pub struct TensorFile {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, HostTensor>,
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    pub fn read(path: &Path) -> Result<Self, WeightsError> {
        let file_err = |detail: String| WeightsError::File { path: path.to_path_buf(), detail };
        let buf = fs::read(path).map_err(|e| file_err(e.to_string()))?;
        let st =
            SafeTensors::deserialize(&buf).map_err(|e| file_err(format!("not a safetensors file: {e}")))?;
        let (_, header) =
            SafeTensors::read_metadata(&buf).map_err(|e| file_err(format!("not a safetensors file: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.iter() {
            let data = decode(view.dtype(), view.data()).ok_or_else(|| WeightsError::Tensor {
                path: path.to_path_buf(),
                name: name.to_string(),
                detail: format!("dtype {:?} (expected F32, F16 or BF16)", view.dtype()),
            })?;
            tensors.insert(name.to_string(), HostTensor { dims: view.shape().to_vec(), data });
        }
        Ok(TensorFile {
            path: path.to_path_buf(),
            tensors,
            metadata: header.metadata().clone().unwrap_or_default(),
        })
    }

    /// The tensor `name` in dfengine's layout, checked against `dims` (dfengine's).
    pub fn get(&self, name: &str, dims: &[usize]) -> Result<HostTensor, WeightsError> {
        let t = self.tensors.get(name).ok_or_else(|| WeightsError::Tensor {
            path: self.path.clone(),
            name: name.into(),
            detail: "missing".into(),
        })?;
        let ours = from_torch_layout(t);
        if ours.dims != dims {
            return Err(WeightsError::Tensor {
                path: self.path.clone(),
                name: name.into(),
                detail: format!(
                    "shape {:?} (PyTorch layout) where the model needs {:?}",
                    t.dims,
                    torch_dims(dims)
                ),
            });
        }
        Ok(ours)
    }

    pub fn meta(&self, key: &str) -> Result<&str, WeightsError> {
        self.metadata.get(key).map(String::as_str).ok_or_else(|| WeightsError::File {
            path: self.path.clone(),
            detail: format!("metadata key `{key}` missing (not a dfengine checkpoint?)"),
        })
    }
}

fn torch_dims(dims: &[usize]) -> Vec<usize> {
    match dims {
        &[k, r, s, c] => vec![k, c, r, s],
        d => d.to_vec(),
    }
}

fn decode(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let pairs = || bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    Some(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => pairs().map(|v| f16::from_bits(v).to_f32()).collect(),
        Dtype::BF16 => pairs().map(|v| bf16::from_bits(v).to_f32()).collect(),
        _ => return None,
    })
}

/// The network's state dict (every parameter and running statistic) in PyTorch's layout.
pub fn state_dict<B: Backend>(b: &B, net: &ResNet<B>) -> Result<BTreeMap<String, HostTensor>, OpError> {
    let mut out = BTreeMap::new();
    for (name, t, _) in net.named() {
        out.insert(name, to_torch_layout(t.dims(), &b.to_vec(t)?));
    }
    Ok(out)
}

/// Replaces `t` with `value` (dfengine's layout) on the backend.
pub fn assign<B: Backend>(b: &B, t: &mut Tensor<B::Storage>, value: &HostTensor) -> Result<(), OpError> {
    *t = b.tensor(Shape::new(value.dims.clone()), &value.data)?;
    Ok(())
}

/// What loading pretrained weights did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PretrainedReport {
    pub loaded: usize,
    /// Tensors of the file the model has no use for (a 1000-way head's shape mismatch is
    /// reported in `head_reinitialised` instead).
    pub unused: Vec<String>,
    /// `fc.weight`/`fc.bias` had another shape (an ImageNet head): kept freshly initialised.
    pub head_reinitialised: bool,
}

/// Loads a torchvision-style state dict into `net`: every backbone tensor must be present
/// with the right shape; the head is taken only when its shape matches.
pub fn load_pretrained<B: Backend>(
    b: &B,
    net: &mut ResNet<B>,
    file: &TensorFile,
) -> Result<PretrainedReport, WeightsError> {
    let mut report = PretrainedReport::default();
    let mut used = std::collections::BTreeSet::new();
    for (name, t, _) in net.named_mut() {
        let head = name.starts_with("fc.");
        let value = match file.get(&name, t.dims()) {
            Ok(v) => v,
            Err(WeightsError::Tensor { .. }) if head => {
                report.head_reinitialised = true;
                used.insert(name);
                continue;
            }
            Err(e) => return Err(e),
        };
        assign(b, t, &value)?;
        used.insert(name);
        report.loaded += 1;
    }
    report.unused = file
        .tensors
        .keys()
        .filter(|k| !used.contains(*k) && !k.ends_with("num_batches_tracked"))
        .cloned()
        .collect();
    Ok(report)
}

/// Loads every tensor of a dfengine checkpoint's model (all must be present and match).
pub fn load_exact<B: Backend>(b: &B, net: &mut ResNet<B>, file: &TensorFile) -> Result<(), WeightsError> {
    for (name, t, _) in net.named_mut() {
        let value = file.get(&name, t.dims())?;
        assign(b, t, &value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_trip_and_put_channels_where_pytorch_does() {
        let dims = [2, 3, 3, 4];
        let data: Vec<f32> = (0..72).map(|i| i as f32).collect();
        let torch = to_torch_layout(&dims, &data);
        assert_eq!(torch.dims, vec![2, 4, 3, 3]);
        // ours [k=1, r=2, s=0, c=3] is theirs [k=1, c=3, r=2, s=0]
        assert_eq!(torch.data[((4 + 3) * 3 + 2) * 3], data[((3 + 2) * 3) * 4 + 3]);
        assert_eq!(from_torch_layout(&torch), HostTensor { dims: dims.to_vec(), data });
    }

    #[test]
    fn files_round_trip_with_metadata_and_name_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let mut tensors = BTreeMap::new();
        tensors.insert("a".to_string(), HostTensor { dims: vec![2, 2], data: vec![1.0, -2.0, 3.5, 0.25] });
        let meta = HashMap::from([("step".to_string(), "12".to_string())]);
        write_safetensors(&path, &tensors, meta).unwrap();
        assert!(!path.with_extension("safetensors.partial").exists());
        let f = TensorFile::read(&path).unwrap();
        assert_eq!(f.tensors, tensors);
        assert_eq!(f.meta("step").unwrap(), "12");
        let e = f.get("a", &[4]).unwrap_err().to_string();
        assert!(e.contains("w.safetensors") && e.contains("`a`") && e.contains("[2, 2]"), "{e}");
        assert!(f.get("b", &[1]).unwrap_err().to_string().contains("missing"));
        fs::write(&path, b"junk").unwrap();
        assert!(TensorFile::read(&path).unwrap_err().to_string().contains("not a safetensors file"));
    }
}
