//! The proxy between the SDK and moto lives in the library (`plan emulate` uses it too); the tests
//! use it under the name they know.

pub use cutover::emulate::proxy::Proxy as TestProxy;
