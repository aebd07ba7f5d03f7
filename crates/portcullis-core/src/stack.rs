use std::sync::Arc;

use tower_layer::Layer;

use crate::Session;

/// Builds a service per target: the gateway's per-session command stack is built by a
/// `NewService<Target<Upstream>>` once the session is authenticated and its upstream is open.
pub trait NewService<T> {
    /// The service built.
    type Service;
    /// Build the service for `target`.
    fn new_service(&self, target: T) -> Self::Service;
}

/// What a per-session stack is built for: the session, and the protocol's upstream service
/// (the innermost service, which talks to the database).
#[derive(Debug)]
#[non_exhaustive]
pub struct Target<U> {
    /// The authenticated session.
    pub session: Arc<Session>,
    /// The upstream service for this session.
    pub upstream: U,
}

impl<U> Target<U> {
    /// A target.
    pub fn new(session: Arc<Session>, upstream: U) -> Self {
        Target { session, upstream }
    }
}

/// A [`NewService`] from a closure.
#[derive(Debug, Clone, Copy)]
pub struct NewServiceFn<F>(F);

/// Make a [`NewService`] from a closure.
pub fn new_service_fn<F>(f: F) -> NewServiceFn<F> {
    NewServiceFn(f)
}

impl<T, S, F: Fn(T) -> S> NewService<T> for NewServiceFn<F> {
    type Service = S;
    fn new_service(&self, target: T) -> S {
        (self.0)(target)
    }
}

/// A [`NewService`] that wraps the upstream in a layer built for each session: the usual way
/// to stack policy layers (`ServiceBuilder` style) in front of a protocol's upstream.
#[derive(Debug, Clone, Copy)]
pub struct NewLayered<F>(F);

impl<F> NewLayered<F> {
    /// `make_layer` is called once per session with the session; its layer wraps the upstream.
    pub fn new(make_layer: F) -> Self {
        NewLayered(make_layer)
    }
}

impl<U, L, F> NewService<Target<U>> for NewLayered<F>
where
    F: Fn(&Arc<Session>) -> L,
    L: Layer<U>,
{
    type Service = L::Service;
    fn new_service(&self, target: Target<U>) -> L::Service {
        (self.0)(&target.session).layer(target.upstream)
    }
}
