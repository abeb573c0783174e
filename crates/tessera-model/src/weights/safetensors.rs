//! Safetensors checkpoints: one `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Files are memory-mapped and every header is validated when the
//! directory is opened, so a truncated or corrupt file fails before any weight is used.

use super::{HostTensor, Shard, WeightSource};
use crate::error::{ModelError, Result};
use crate::spec::{read_json, DType};
use ::safetensors::{Dtype as StDtype, SafeTensors};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

pub struct SafetensorsSource {
    files: Vec<(PathBuf, Mmap)>,
    /// Tensor name -> index into `files`.
    index: BTreeMap<String, usize>,
}

const INDEX_FILE: &str = "model.safetensors.index.json";
const SINGLE_FILE: &str = "model.safetensors";

impl SafetensorsSource {
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join(INDEX_FILE);
        let names = if index_path.exists() {
            shard_names(&index_path)?
        } else if dir.join(SINGLE_FILE).exists() {
            vec![SINGLE_FILE.to_string()]
        } else {
            return Err(ModelError::Io {
                path: dir.join(SINGLE_FILE),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no {SINGLE_FILE} or {INDEX_FILE}"),
                ),
            });
        };
        let mut source = SafetensorsSource { files: Vec::new(), index: BTreeMap::new() };
        for name in names {
            let path = dir.join(&name);
            let mmap = map_file(&path)?;
            let tensors = SafeTensors::deserialize(&mmap)
                .map_err(|e| ModelError::Safetensors { path: path.clone(), message: e.to_string() })?;
            for tensor_name in tensors.names() {
                source.index.insert(tensor_name.to_string(), source.files.len());
            }
            source.files.push((path, mmap));
        }
        Ok(source)
    }

    /// Every tensor name in the checkpoint.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }
}

fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|source| ModelError::Io { path: path.into(), source })?;
    // Safety: the file is opened read-only; a checkpoint modified while we read it is outside
    // what any loader can defend against.
    unsafe { Mmap::map(&file) }.map_err(|source| ModelError::Io { path: path.into(), source })
}

/// The distinct shard files of an index, in first-seen order.
fn shard_names(index_path: &Path) -> Result<Vec<String>> {
    let json = read_json(index_path)?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::MissingField { path: index_path.into(), field: "weight_map".into() })?;
    let mut names: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| ModelError::InvalidField {
            path: index_path.into(),
            field: format!("weight_map.{tensor}"),
            message: "expected a file name".into(),
        })?;
        if file.contains('/') || file.contains("..") {
            return Err(ModelError::InvalidField {
                path: index_path.into(),
                field: format!("weight_map.{tensor}"),
                message: format!("`{file}` is not a file name in the model directory"),
            });
        }
        if !names.iter().any(|n| n == file) {
            names.push(file.to_string());
        }
    }
    Ok(names)
}

fn dtype_of(path: &Path, name: &str, dtype: StDtype) -> Result<DType> {
    match dtype {
        StDtype::F32 => Ok(DType::F32),
        StDtype::F16 => Ok(DType::F16),
        StDtype::BF16 => Ok(DType::Bf16),
        other => Err(ModelError::UnsupportedDtype {
            path: path.into(),
            name: name.into(),
            dtype: format!("{other:?}"),
        }),
    }
}

impl WeightSource for SafetensorsSource {
    fn get(&self, name: &str, full_shape: &[usize], shard: Shard, _dtype: DType) -> Result<HostTensor> {
        let &file = self.index.get(name).ok_or_else(|| ModelError::MissingTensor {
            name: name.into(),
            searched: self.files.iter().map(|(p, _)| p.display().to_string()).collect::<Vec<_>>().join(", "),
        })?;
        let (path, mmap) = &self.files[file];
        let tensors = SafeTensors::deserialize(mmap).expect("header was validated at open");
        let view = tensors.tensor(name).expect("name comes from this file's header");
        if view.shape() != full_shape {
            return Err(ModelError::ShapeMismatch {
                path: path.clone(),
                name: name.into(),
                expected: full_shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        // Slice straight from the mapped file: a rank copies only its own part.
        Ok(HostTensor::slice_of(dtype_of(path, name, view.dtype())?, view.shape(), view.data(), shard))
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}
