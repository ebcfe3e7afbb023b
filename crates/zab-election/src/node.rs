//! Node driver.
