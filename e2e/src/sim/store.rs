//! The simulated API server's object store: every kind as JSON, one resourceVersion counter,
//! a bounded change history for watches, finalizers and ownerReference garbage collection.

use super::selectors::{FieldSelector, LabelSelector, labels_of};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

/// A served resource type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group ("" for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Plural resource name.
    pub plural: String,
    /// Singular resource name.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Has a status subresource.
    pub status: bool,
    /// Has a scale subresource (with the spec path of replicas).
    pub scale: bool,
    /// Has a log subresource (pods).
    pub log: bool,
    /// Built in (strategic merge patch allowed), as opposed to a custom resource.
    pub builtin: bool,
    /// Short names for discovery.
    pub short_names: Vec<String>,
}

impl ResourceType {
    /// A built-in type.
    pub fn builtin(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        ResourceType {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            namespaced,
            status: false,
            scale: false,
            log: false,
            builtin: true,
            short_names: Vec::new(),
        }
    }
    /// `group/version`, or `v1` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// Store key: `group/plural`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }
}

/// An API error, rendered as a `Status` body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason (NotFound, Conflict, …).
    pub reason: &'static str,
    /// Human message.
    pub message: String,
    /// Details: (kind, name).
    pub details: Option<(String, String)>,
}

impl ApiError {
    /// 404.
    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{}{} \"{name}\" not found", rt.plural, group_suffix(rt)),
            details: Some((rt.plural.clone(), name.into())),
        }
    }
    /// 409 AlreadyExists.
    pub fn exists(rt: &ResourceType, name: &str) -> Self {
        ApiError {
            code: 409,
            reason: "AlreadyExists",
            message: format!(
                "{}{} \"{name}\" already exists",
                rt.plural,
                group_suffix(rt)
            ),
            details: Some((rt.plural.clone(), name.into())),
        }
    }
    /// 409 Conflict.
    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {}{} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                rt.plural,
                group_suffix(rt)
            ),
            details: Some((rt.plural.clone(), name.into())),
        }
    }
    /// A plain error.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }
    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some((kind, name)) = &self.details {
            s["details"] = json!({"name": name, "kind": kind});
        }
        s
    }
}

fn group_suffix(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        String::new()
    } else {
        format!(".{}", rt.group)
    }
}

/// One change, as watches see it.
#[derive(Clone, Debug)]
pub struct Change {
    /// resourceVersion of the change.
    pub rv: u64,
    /// Store key of the type.
    pub key: String,
    /// ADDED, MODIFIED or DELETED.
    pub kind: &'static str,
    /// The object after the change (before, for DELETED).
    pub object: Value,
    /// The object before the change.
    pub old: Option<Value>,
}

/// Which part of an object an update writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Everything but status (for types with a status subresource).
    Main,
    /// Only status.
    Status,
}

/// How deletion treats dependents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// Delete dependents after the owner.
    Background,
    /// Delete dependents first (approximated: in the same step).
    Foreground,
    /// Keep dependents, removing the ownerReference.
    Orphan,
}

type Objects = BTreeMap<(String, String), Value>;

/// Past changes to replay and a receiver for the ones to come.
pub type WatchStart = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>);

struct Inner {
    rv: u64,
    types: BTreeMap<String, ResourceType>,
    objects: HashMap<String, Objects>,
    history: VecDeque<Arc<Change>>,
    compacted: u64,
    uid_counter: u64,
}

/// The store.
pub struct Store {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Change>>,
    history_cap: usize,
}

/// The current time as the API server writes it.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or(jiff::Timestamp::now())
        .to_string()
}

/// The current time with microseconds (MicroTime).
pub fn now_micro() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Microsecond)
        .unwrap_or(jiff::Timestamp::now())
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

fn meta(obj: &Value, field: &str) -> Option<String> {
    obj.pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .map(String::from)
}

fn without_meta_and_status(v: &Value) -> Value {
    let mut v = v.clone();
    if let Value::Object(m) = &mut v {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

impl Default for Store {
    fn default() -> Self {
        Self::new(20_000)
    }
}

impl Store {
    /// A store keeping `history_cap` changes for watches.
    pub fn new(history_cap: usize) -> Self {
        let (tx, _) = broadcast::channel(65_536);
        Store {
            inner: Mutex::new(Inner {
                rv: 1000,
                types: BTreeMap::new(),
                objects: HashMap::new(),
                history: VecDeque::new(),
                compacted: 0,
                uid_counter: 0,
            }),
            tx,
            history_cap,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Serve a type.
    pub fn register(&self, rt: ResourceType) {
        let mut g = self.lock();
        g.objects.entry(rt.key()).or_default();
        g.types.insert(rt.key(), rt);
    }

    /// Stop serving a type (its objects go too).
    pub fn unregister(&self, key: &str) {
        let mut g = self.lock();
        g.types.remove(key);
        g.objects.remove(key);
    }

    /// Every served type.
    pub fn types(&self) -> Vec<ResourceType> {
        self.lock().types.values().cloned().collect()
    }

    /// Find a served type by group, version and plural.
    pub fn resource(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.lock()
            .types
            .values()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    /// Find a served type by kind (first match), for the harness.
    pub fn resource_by_kind(&self, kind: &str) -> Option<ResourceType> {
        self.lock().types.values().find(|t| t.kind == kind).cloned()
    }

    /// The current resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    fn emit(
        &self,
        g: &mut Inner,
        key: &str,
        kind: &'static str,
        object: Value,
        old: Option<Value>,
    ) {
        let change = Arc::new(Change {
            rv: g.rv,
            key: key.to_string(),
            kind,
            object,
            old,
        });
        g.history.push_back(change.clone());
        while g.history.len() > self.history_cap {
            if let Some(c) = g.history.pop_front() {
                g.compacted = c.rv;
            }
        }
        let _ = self.tx.send(change);
    }

    /// Drop all watch history, so older resourceVersions get 410 Gone.
    pub fn compact(&self) {
        let mut g = self.lock();
        g.compacted = g.rv;
        g.history.clear();
    }

    /// Get one object.
    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        let g = self.lock();
        g.objects
            .get(&rt.key())
            .and_then(|o| o.get(&(ns.to_string(), name.to_string())))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// List objects (all namespaces when `ns` is None), with the list's resourceVersion.
    pub fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        ls: &LabelSelector,
        fs: &FieldSelector,
    ) -> (Vec<Value>, u64) {
        let g = self.lock();
        let items = g
            .objects
            .get(&rt.key())
            .map(|objs| {
                objs.iter()
                    .filter(|((ons, _), _)| ns.is_none_or(|n| n == ons))
                    .filter(|(_, o)| ls.matches(&labels_of(o)) && fs.matches(o))
                    .map(|(_, o)| o.clone())
                    .collect()
            })
            .unwrap_or_default();
        (items, g.rv)
    }

    /// Every object of a type (controllers).
    pub fn all(&self, key: &str) -> Vec<Value> {
        self.lock()
            .objects
            .get(key)
            .map(|o| o.values().cloned().collect())
            .unwrap_or_default()
    }

    fn namespace_exists(g: &Inner, ns: &str) -> bool {
        g.objects
            .get("/namespaces")
            .is_some_and(|o| o.contains_key(&(String::new(), ns.to_string())))
    }

    /// The store key and current object of `name`, or a 404.
    fn stored(
        g: &Inner,
        rt: &ResourceType,
        ns: &str,
        name: &str,
    ) -> Result<((String, String), Value), ApiError> {
        let ns_key = if rt.namespaced {
            ns.to_string()
        } else {
            String::new()
        };
        let key = (ns_key, name.to_string());
        let old = g
            .objects
            .get(&rt.key())
            .and_then(|o| o.get(&key))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        Ok((key, old))
    }

    /// Create an object. Fills in uid, resourceVersion, generation and creationTimestamp.
    pub fn create(&self, rt: &ResourceType, ns: &str, mut obj: Value) -> Result<Value, ApiError> {
        let mut g = self.lock();
        if rt.namespaced && !Self::namespace_exists(&g, ns) {
            return Err(ApiError {
                code: 404,
                reason: "NotFound",
                message: format!("namespaces \"{ns}\" not found"),
                details: Some(("namespaces".into(), ns.into())),
            });
        }
        if !obj.is_object() {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the body must be a JSON object",
            ));
        }
        let m = obj
            .as_object_mut()
            .ok_or_else(|| ApiError::new(400, "BadRequest", "not an object"))?;
        let metadata = m.entry("metadata").or_insert_with(|| json!({}));
        if !metadata.is_object() {
            return Err(ApiError::new(422, "Invalid", "metadata must be an object"));
        }
        g.uid_counter += 1;
        let uid_n = g.uid_counter;
        let mut name = metadata
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            if let Some(prefix) = metadata.get("generateName").and_then(Value::as_str) {
                name = format!("{prefix}{}", short_suffix(uid_n));
            } else {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "{} is invalid: metadata.name: Required value: name or generateName is required",
                        rt.kind
                    ),
                ));
            }
        }
        if !valid_name(&name) {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "{} \"{name}\" is invalid: metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
                    rt.kind
                ),
            ));
        }
        let ns_key = if rt.namespaced {
            ns.to_string()
        } else {
            String::new()
        };
        if g.objects
            .get(&rt.key())
            .is_some_and(|o| o.contains_key(&(ns_key.clone(), name.clone())))
        {
            return Err(ApiError::exists(rt, &name));
        }
        g.rv += 1;
        let rv = g.rv;
        let md = metadata
            .as_object_mut()
            .ok_or_else(|| ApiError::new(400, "BadRequest", "metadata"))?;
        md.insert("name".into(), json!(name));
        if rt.namespaced {
            md.insert("namespace".into(), json!(ns));
        } else {
            md.remove("namespace");
        }
        md.insert(
            "uid".into(),
            json!(format!("00000000-0000-4000-8000-{uid_n:012}")),
        );
        md.insert("resourceVersion".into(), json!(rv.to_string()));
        md.insert("creationTimestamp".into(), json!(now_rfc3339()));
        md.insert("generation".into(), json!(1));
        md.remove("deletionTimestamp");
        md.remove("managedFields");
        m.insert("apiVersion".into(), json!(rt.api_version()));
        m.insert("kind".into(), json!(rt.kind));
        super::defaults::apply(rt, &mut obj);
        g.objects
            .entry(rt.key())
            .or_default()
            .insert((ns_key, name), obj.clone());
        self.emit(&mut g, &rt.key(), "ADDED", obj.clone(), None);
        Ok(obj)
    }

    /// Replace an object (or its status). `new`'s resourceVersion, when set, must be current.
    pub fn update(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        new: Value,
        part: Part,
    ) -> Result<Value, ApiError> {
        let mut g = self.lock();
        let (key, old) = Self::stored(&g, rt, ns, name)?;
        if let Some(want) = meta(&new, "resourceVersion")
            && !want.is_empty()
            && Some(want) != meta(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(rt, name));
        }
        if let Some(n) = meta(&new, "name")
            && n != name
        {
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!("the name of the object ({n}) does not match the name on the URL ({name})"),
            ));
        }
        let mut next = match part {
            Part::Status => {
                let mut o = old.clone();
                o["status"] = new.get("status").cloned().unwrap_or(Value::Null);
                if o["status"].is_null()
                    && let Value::Object(m) = &mut o
                {
                    m.remove("status");
                }
                o
            }
            Part::Main => {
                let mut o = new.clone();
                if !o.is_object() {
                    return Err(ApiError::new(
                        400,
                        "BadRequest",
                        "the body must be a JSON object",
                    ));
                }
                // Identity and server-owned metadata come from the stored object.
                let mut md: Map<String, Value> = o
                    .get("metadata")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                for f in [
                    "uid",
                    "creationTimestamp",
                    "namespace",
                    "name",
                    "generation",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                ] {
                    match old.pointer(&format!("/metadata/{f}")) {
                        Some(v) => md.insert(f.into(), v.clone()),
                        None => md.remove(f),
                    };
                }
                md.remove("managedFields");
                o["metadata"] = Value::Object(md);
                o["apiVersion"] = json!(rt.api_version());
                o["kind"] = json!(rt.kind);
                if rt.status {
                    match old.get("status") {
                        Some(s) => o["status"] = s.clone(),
                        None => {
                            if let Value::Object(m) = &mut o {
                                m.remove("status");
                            }
                        }
                    }
                }
                super::defaults::apply(rt, &mut o);
                if without_meta_and_status(&o) != without_meta_and_status(&old) {
                    let gen_n = old
                        .pointer("/metadata/generation")
                        .and_then(Value::as_i64)
                        .unwrap_or(1);
                    o["metadata"]["generation"] = json!(gen_n + 1);
                }
                o
            }
        };
        if next == old {
            // A no-op write keeps the resourceVersion, as the API server does.
            return Ok(old);
        }
        g.rv += 1;
        next["metadata"]["resourceVersion"] = json!(g.rv.to_string());
        let finalizers_left = next
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if next.pointer("/metadata/deletionTimestamp").is_some()
            && !finalizers_left
            && part == Part::Main
        {
            if let Some(objs) = g.objects.get_mut(&rt.key()) {
                objs.remove(&key);
            }
            self.emit(&mut g, &rt.key(), "DELETED", next.clone(), Some(old));
            self.collect_garbage(&mut g, &next, Propagation::Background);
            return Ok(next);
        }
        if let Some(objs) = g.objects.get_mut(&rt.key()) {
            objs.insert(key, next.clone());
        }
        self.emit(&mut g, &rt.key(), "MODIFIED", next.clone(), Some(old));
        Ok(next)
    }

    /// Change an object in place (the simulated controllers' writes; no conflict check).
    pub fn mutate(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Result<Value, ApiError> {
        let mut g = self.lock();
        let (key, old) = Self::stored(&g, rt, ns, name)?;
        let mut next = old.clone();
        f(&mut next);
        if next == old {
            return Ok(old);
        }
        if without_meta_and_status(&next) != without_meta_and_status(&old) {
            let gen_n = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            next["metadata"]["generation"] = json!(gen_n + 1);
        }
        g.rv += 1;
        next["metadata"]["resourceVersion"] = json!(g.rv.to_string());
        if let Some(objs) = g.objects.get_mut(&rt.key()) {
            objs.insert(key, next.clone());
        }
        self.emit(&mut g, &rt.key(), "MODIFIED", next.clone(), Some(old));
        Ok(next)
    }

    /// Delete an object: with finalizers it only gets a deletionTimestamp; without, it goes
    /// and its dependents are collected per `propagation`.
    pub fn delete(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        propagation: Propagation,
        precondition_rv: Option<&str>,
    ) -> Result<Value, ApiError> {
        let mut g = self.lock();
        let (key, old) = Self::stored(&g, rt, ns, name)?;
        if let Some(want) = precondition_rv
            && Some(want.to_string()) != meta(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(rt, name));
        }
        let has_finalizers = old
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let graceful_pod =
            rt.key() == "/pods" && old.pointer("/metadata/deletionTimestamp").is_none();
        if has_finalizers || graceful_pod {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(old);
            }
            let mut next = old.clone();
            next["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            if graceful_pod {
                next["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            }
            g.rv += 1;
            next["metadata"]["resourceVersion"] = json!(g.rv.to_string());
            if let Some(objs) = g.objects.get_mut(&rt.key()) {
                objs.insert(key, next.clone());
            }
            self.emit(&mut g, &rt.key(), "MODIFIED", next.clone(), Some(old));
            return Ok(next);
        }
        if let Some(objs) = g.objects.get_mut(&rt.key()) {
            objs.remove(&key);
        }
        g.rv += 1;
        let mut gone = old.clone();
        gone["metadata"]["resourceVersion"] = json!(g.rv.to_string());
        self.emit(&mut g, &rt.key(), "DELETED", gone.clone(), Some(old));
        self.collect_garbage(&mut g, &gone, propagation);
        Ok(gone)
    }

    /// Remove a terminating object for good (the kubelet finishing a pod's termination).
    pub fn finish_deletion(&self, rt: &ResourceType, ns: &str, name: &str) {
        let mut g = self.lock();
        let key = (ns.to_string(), name.to_string());
        let Some(old) = g.objects.get_mut(&rt.key()).and_then(|o| o.remove(&key)) else {
            return;
        };
        g.rv += 1;
        let mut gone = old.clone();
        gone["metadata"]["resourceVersion"] = json!(g.rv.to_string());
        self.emit(&mut g, &rt.key(), "DELETED", gone.clone(), Some(old));
        self.collect_garbage(&mut g, &gone, Propagation::Background);
    }

    fn collect_garbage(&self, g: &mut Inner, owner: &Value, propagation: Propagation) {
        let Some(uid) = meta(owner, "uid") else {
            return;
        };
        let mut dependents: Vec<(String, (String, String))> = Vec::new();
        for (key, objs) in &g.objects {
            for (k, o) in objs {
                let owned = o
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| {
                        refs.iter()
                            .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid.as_str()))
                    });
                if owned {
                    dependents.push((key.clone(), k.clone()));
                }
            }
        }
        for (key, k) in dependents {
            let Some(old) = g.objects.get(&key).and_then(|o| o.get(&k)).cloned() else {
                continue;
            };
            g.rv += 1;
            let rv = g.rv;
            match propagation {
                Propagation::Orphan => {
                    let mut next = old.clone();
                    if let Some(Value::Array(refs)) = next.pointer_mut("/metadata/ownerReferences")
                    {
                        refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid.as_str()));
                    }
                    next["metadata"]["resourceVersion"] = json!(rv.to_string());
                    if let Some(objs) = g.objects.get_mut(&key) {
                        objs.insert(k, next.clone());
                    }
                    self.emit(g, &key, "MODIFIED", next, Some(old));
                }
                Propagation::Background | Propagation::Foreground => {
                    let has_finalizers = old
                        .pointer("/metadata/finalizers")
                        .and_then(Value::as_array)
                        .is_some_and(|f| !f.is_empty());
                    if has_finalizers
                        || (key == "/pods" && old.pointer("/metadata/deletionTimestamp").is_none())
                    {
                        if old.pointer("/metadata/deletionTimestamp").is_some() {
                            continue;
                        }
                        let mut next = old.clone();
                        next["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                        next["metadata"]["resourceVersion"] = json!(rv.to_string());
                        if let Some(objs) = g.objects.get_mut(&key) {
                            objs.insert(k, next.clone());
                        }
                        self.emit(g, &key, "MODIFIED", next, Some(old));
                    } else {
                        if let Some(objs) = g.objects.get_mut(&key) {
                            objs.remove(&k);
                        }
                        let mut gone = old.clone();
                        gone["metadata"]["resourceVersion"] = json!(rv.to_string());
                        self.emit(g, &key, "DELETED", gone.clone(), Some(old));
                        self.collect_garbage(g, &gone, propagation);
                    }
                }
            }
        }
    }

    /// Changes of `key` after `rv`, and a receiver for later ones; Err when `rv` is compacted.
    pub fn watch_from(&self, key: &str, rv: u64) -> Result<WatchStart, u64> {
        let g = self.lock();
        if rv < g.compacted {
            return Err(g.compacted);
        }
        let rx = self.tx.subscribe();
        let past = g
            .history
            .iter()
            .filter(|c| c.rv > rv && c.key == key)
            .cloned()
            .collect();
        Ok((past, rx))
    }

    /// A receiver of every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }
}

fn short_suffix(n: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = n.wrapping_mul(2_654_435_761).wrapping_add(97);
    (0..5)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// A random-looking 5-character suffix, as the API server's generateName produces.
pub fn name_suffix(n: u64) -> String {
    short_suffix(n)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}
