use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::Error;

/// The body of a [`crate::Response`]: a stream of protocol events the protocol server pulls
/// and writes to the client, one at a time. Pulling is what drives the upstream: a body that
/// is not polled reads nothing, so backpressure runs from the client to the database.
///
/// The stream ends (`None`) when the command unit's reply is complete.
pub trait ReplyBody {
    /// The protocol's event (for PostgreSQL a backend message); it implements
    /// [`crate::EventView`] so that policy layers can read it.
    type Event;

    /// The next event, `None` at the end of the reply.
    fn poll_event(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Self::Event, Error>>>;

    /// The columns of rows that arrive without a result-shape event of their own (a prepared
    /// statement executed again: PostgreSQL sends no RowDescription, the protocol crate
    /// remembers it), for a layer that must read them. `None` when unknown.
    fn implied_columns(&self) -> Option<Vec<crate::Column>> {
        None
    }

    /// While `COPY`-style output streams (after the event that starts it): how its rows are
    /// written, when the protocol crate knows (it read the statement); the columns are then
    /// [`ReplyBody::implied_columns`]. `None` when unknown.
    fn copy_layout(&self) -> Option<crate::CopyLayout> {
        None
    }
}

impl<B: ReplyBody + Unpin + ?Sized> ReplyBody for Box<B> {
    type Event = B::Event;
    fn poll_event(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Self::Event, Error>>> {
        Pin::new(&mut **self).poll_event(cx)
    }
    fn implied_columns(&self) -> Option<Vec<crate::Column>> {
        (**self).implied_columns()
    }
    fn copy_layout(&self) -> Option<crate::CopyLayout> {
        (**self).copy_layout()
    }
}

impl<B: ReplyBody + ?Sized> ReplyBody for Pin<Box<B>> {
    type Event = B::Event;
    fn poll_event(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Self::Event, Error>>> {
        self.get_mut().as_mut().poll_event(cx)
    }
    fn implied_columns(&self) -> Option<Vec<crate::Column>> {
        (**self).implied_columns()
    }
    fn copy_layout(&self) -> Option<crate::CopyLayout> {
        (**self).copy_layout()
    }
}

/// A type-erased reply body.
pub type BoxReply<E> = Pin<Box<dyn ReplyBody<Event = E> + Send>>;

/// Helpers on every [`ReplyBody`].
pub trait ReplyBodyExt: ReplyBody {
    /// Erase the body's type.
    fn boxed(self) -> BoxReply<Self::Event>
    where
        Self: Sized + Send + 'static,
    {
        Box::pin(self)
    }

    /// A future for the next event.
    fn next_event(&mut self) -> NextEvent<'_, Self>
    where
        Self: Unpin,
    {
        NextEvent { body: self }
    }
}

impl<B: ReplyBody + ?Sized> ReplyBodyExt for B {}

/// Future returned by [`ReplyBodyExt::next_event`].
#[derive(Debug)]
pub struct NextEvent<'a, B: ?Sized> {
    body: &'a mut B,
}

impl<B: ReplyBody + Unpin + ?Sized> std::future::Future for NextEvent<'_, B> {
    type Output = Option<Result<B::Event, Error>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut *self.body).poll_event(cx)
    }
}

/// A reply with no events.
#[derive(Debug)]
pub struct Empty<E>(PhantomData<fn() -> E>);

impl<E> Default for Empty<E> {
    fn default() -> Self {
        Empty(PhantomData)
    }
}

impl<E> ReplyBody for Empty<E> {
    type Event = E;
    fn poll_event(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<E, Error>>> {
        Poll::Ready(None)
    }
}
